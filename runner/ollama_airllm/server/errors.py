"""llama-server's error JSON: {"error": {"code", "message", "type"}} with the matching HTTP status."""

from __future__ import annotations

from fastapi.responses import JSONResponse

ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "not_found_error",
    413: "invalid_request_error",
    500: "server_error",
    501: "not_supported_error",
    503: "unavailable_error",
}


class ApiError(Exception):
    """An error answered in llama-server's shape (never a traceback)."""

    def __init__(self, message: str, code: int = 400, type_: str | None = None, **extra) -> None:
        super().__init__(message)
        self.message = message
        self.code = code
        self.type = type_ or ERROR_TYPES.get(code, "server_error")
        self.extra = extra

    def body(self) -> dict:
        return {"error": {"code": self.code, "message": self.message, "type": self.type, **self.extra}}

    def response(self) -> JSONResponse:
        # openai's client retries 5xx/408/409/429 unless told not to
        return JSONResponse(self.body(), status_code=self.code, headers={"x-should-retry": "false"})


class ContextError(ApiError):
    """llama-server's exceed_context_size_error. at_least: n_prompt is a lower bound (not tokenized)."""

    def __init__(self, n_prompt: int, n_ctx: int, at_least: bool = False) -> None:
        super().__init__(
            f"request ({'at least ' if at_least else ''}{n_prompt} tokens) exceeds the available "
            f"context size ({n_ctx} tokens), try increasing it",
            400,
            "exceed_context_size_error",
            n_prompt_tokens=n_prompt,
            n_ctx=n_ctx,
        )


def json_type(v) -> str:
    """nlohmann::json's type_name() for a Python JSON value."""
    if v is None:
        return "null"
    if isinstance(v, bool):
        return "boolean"
    if isinstance(v, int | float):
        return "number"
    if isinstance(v, str):
        return "string"
    if isinstance(v, list):
        return "array"
    return "object"
