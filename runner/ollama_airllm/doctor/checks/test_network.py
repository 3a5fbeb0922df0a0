"""Ollama's address: it listens where the profile says, nothing of ours listens on all addresses."""

from __future__ import annotations

import json

from ollama_airllm.doctor import probe
from ollama_airllm.doctor.outcome import fail, not_applicable

WILDCARDS = {"0.0.0.0", "*", "[::]", "::"}


def _split(address: str) -> tuple[str, str]:
    host, _, port = address.rpartition(":")
    return host, port


def test_listens_on_profile_address(host, profile, facts):
    """Ollama listens on the profile's address (127.0.0.1:11434 by default)"""
    facts.require_ollama()
    address, port = _split(profile.ollama.host)
    socket = host.socket(f"tcp://{address.strip('[]')}:{port}")
    if not socket.is_listening:
        fail(
            f"nothing listens on {profile.ollama.host}",
            "`systemctl status ollama` shows why it is not up; check OLLAMA_HOST in /etc/default/ollama",
        )


def test_nothing_listens_on_all_addresses(host, profile, facts):
    """no socket of the ollama user listens on all addresses, unless the profile asks for it"""
    facts.require_root()
    if not host.user(probe.USER).exists:
        not_applicable(f"no {probe.USER} user (reported by the account checks)")
    uid = host.user(probe.USER).uid
    allowed_host, _ = _split(profile.ollama.host)
    if allowed_host in WILDCARDS:
        return
    out = host.run("ss -ltnHe").stdout
    exposed = []
    for line in out.splitlines():
        fields = line.split()
        if len(fields) < 4 or f"uid:{uid}" not in fields:
            continue
        local_host, port = _split(fields[3])
        if local_host.split("%")[0] in WILDCARDS:
            exposed.append(f"{local_host}:{port}")
    if exposed:
        fail(
            f"{probe.USER} listens on all addresses ({', '.join(exposed)}): anyone on your network can use "
            "the models and the API has no authentication",
            f"set `OLLAMA_HOST={profile.ollama.host}` in {probe.ENV_FILE} and restart; to serve the LAN on "
            "purpose, set ollama.host in the profile and re-render",
        )


def test_api_version(host, profile, facts):
    """GET /api/version answers with the packaged Ollama version"""
    facts.require_ollama()
    status, body = probe.http(host, f"http://{profile.ollama.host}/api/version")
    if status != 200:
        fail(
            f"GET http://{profile.ollama.host}/api/version failed: {status or ''} {body}".strip(),
            "`systemctl status ollama` and `journalctl -u ollama -b` show why Ollama does not answer",
        )
    version = json.loads(body).get("version")
    if version != profile.pins.ollama:
        fail(
            f"Ollama answers version {version}, the package pins {profile.pins.ollama}",
            "another Ollama answers on this port (the upstream installer's /usr/local/bin/ollama?): "
            "stop and remove it, then `systemctl restart ollama`",
        )
