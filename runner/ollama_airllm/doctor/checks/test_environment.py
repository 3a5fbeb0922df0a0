"""/etc/default/ollama: valid EnvironmentFile syntax, used by the units, and really applied to them."""

from __future__ import annotations

from ollama_airllm.doctor import probe
from ollama_airllm.doctor.envfile import EnvFile, parse_env_file
from ollama_airllm.doctor.outcome import fail, not_applicable

RELOAD = "then `systemctl daemon-reload && systemctl restart ollama`"


def _env_file(host) -> EnvFile:
    f = host.file(probe.ENV_FILE)
    if not f.exists:
        fail(
            f"{probe.ENV_FILE} is missing",
            f"restore it from the package: reinstall it, or copy {probe.ENV_FILE}.pacsave back",
        )
    return parse_env_file(f.content_string)


def test_env_file_syntax(host):
    """/etc/default/ollama has only KEY=value lines (no `export`, no inline comments)"""
    env = _env_file(host)
    if env.problems:
        fail(
            f"{probe.ENV_FILE} has lines systemd ignores or misreads:\n"
            + "\n".join("  " + p for p in env.problems),
            f"write plain KEY=value lines (drop `export`, put comments on their own line), {RELOAD}",
        )


def test_env_file_matches_profile(host, profile, loaded_profile):
    """/etc/default/ollama points Ollama at the profile's address and models directory"""
    env = _env_file(host)
    want = {"OLLAMA_HOST": profile.ollama.host, "OLLAMA_MODELS": profile.ollama.models_dir}
    wrong = [
        f"{k}={env.values[k]!r} (profile: {v!r})"
        for k, v in want.items()
        if k in env.values and env.values[k] != v
    ]
    if wrong:
        fail(
            f"{probe.ENV_FILE} differs from the profile {loaded_profile.source}: " + "; ".join(wrong),
            f"set the profile's values in {probe.ENV_FILE} (or re-render the package from an updated "
            f"profile), {RELOAD}",
        )


def test_units_read_env_file(host, facts):
    """ollama.service and the runner unit read /etc/default/ollama"""
    facts.require_systemd()
    for unit in (probe.SERVICE, probe.RUNNER_PROBE_INSTANCE):
        files = probe.unit_props(host, unit, "EnvironmentFiles").get("EnvironmentFiles", "")
        if probe.ENV_FILE not in files:
            name = unit.replace("@doctor", "@")
            fail(
                f"{name} does not read {probe.ENV_FILE} (EnvironmentFiles={files or 'none'})",
                f"add `EnvironmentFile=-{probe.ENV_FILE}` in a drop-in (`systemctl edit {name}`), {RELOAD}",
            )


def test_env_file_applied(host, facts):
    """every variable of /etc/default/ollama is in the environment of the running services"""
    facts.require_systemd()
    facts.require_root()
    env = _env_file(host)
    running = probe.active_units(host)
    if not running:
        not_applicable(
            "neither ollama.service nor a runner unit is running, so there is no environment to compare"
        )
    stale = []
    for unit in running:
        environ = probe.main_pid_environ(host, unit)
        if environ is None:
            continue
        differ = [
            f"{k} (file {v!r}, process {environ.get(k)!r})"
            for k, v in env.values.items()
            if environ.get(k) != v
        ]
        if differ:
            stale.append(f"{unit}: " + ", ".join(differ))
    if stale:
        fail(
            f"the running services do not have the values of {probe.ENV_FILE}:\n"
            + "\n".join("  " + s for s in stale),
            "the file changed after they started, or a drop-in overrides it: check `systemctl cat ollama`, "
            + RELOAD,
        )
