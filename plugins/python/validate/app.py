"""Request validation at the edge, written in Python.

Refuses what an API would refuse anyway, before it costs an upstream call:
a method the route does not serve (405 with `Allow`), a missing required
header (400), a body of the wrong media type (415) or too large (413), and
a JSON body without the fields the route needs, or with fields of the
wrong type (400). Every refusal is an RFC 9457 problem document naming
what was wrong.
"""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import http_filter
from wit_world.imports import log, types

# JSON types a field may be declared with, and the Python types they parse to.
TYPES = {
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "object": (dict,),
    "array": (list,),
}
WITH_BODY = {"POST", "PUT", "PATCH"}


class Rules:
    def __init__(self, config: dict):
        self.methods = [m.upper() for m in config.get("methods", [])]
        self.require_headers = [h.lower() for h in config.get("require_headers", [])]
        self.content_types = [c.lower() for c in config.get("content_types", [])]
        self.max_body_bytes = int(config.get("max_body_bytes", 1 << 20))
        self.fields = config.get("json_fields", {})
        for name, kind in self.fields.items():
            if kind not in TYPES:
                raise ValueError(
                    f"json_fields.{name}: unknown type {kind!r} (one of {', '.join(TYPES)})"
                )


def problem(status: int, title: str, detail: str, extra=()) -> http_filter.Verdict:
    body = json.dumps({"type": "about:blank", "status": status, "title": title, "detail": detail})
    headers = [("content-type", "application/problem+json"), *extra]
    return http_filter.Verdict_Respond(types.Reply(status, headers, body.encode()))


class HttpFilter(exports.HttpFilter):
    rules: Rules

    def init(self, config: str) -> None:
        try:
            HttpFilter.rules = Rules(json.loads(config))
        except (ValueError, TypeError, AttributeError) as e:
            raise Err(f"validate: {e}")

    def on_request(self, req: types.Request) -> http_filter.Verdict:
        rules = HttpFilter.rules
        method = req.method()
        if rules.methods and method not in rules.methods:
            allow = ("allow", ", ".join(rules.methods))
            return problem(405, "Method Not Allowed", f"{method} is not served here", [allow])
        headers = req.headers()
        for name in rules.require_headers:
            if not headers.has(name):
                return problem(400, "Bad Request", f"the {name} header is required")
        if method not in WITH_BODY:
            return http_filter.Verdict_Forward()

        media = (headers.get("content-type") or "").split(";")[0].strip().lower()
        if rules.content_types and media not in rules.content_types:
            detail = f"{media or 'no media type'} is not accepted; send {' or '.join(rules.content_types)}"
            return problem(415, "Unsupported Media Type", detail)
        try:
            body = req.body()
        except Err as e:
            log.write(log.Level.WARN, f"validate: no body access ({e.value}); set body = true")
            return http_filter.Verdict_Forward()
        if len(body) > rules.max_body_bytes:
            detail = f"the body is {len(body)} bytes; at most {rules.max_body_bytes}"
            return problem(413, "Content Too Large", detail)
        if not rules.fields:
            return http_filter.Verdict_Forward()
        try:
            document = json.loads(body)
        except ValueError as e:
            return problem(400, "Bad Request", f"the body is not JSON: {e}")
        if not isinstance(document, dict):
            return problem(400, "Bad Request", "the body must be a JSON object")
        for name, kind in rules.fields.items():
            if name not in document:
                return problem(400, "Bad Request", f"the field {name!r} is required")
            value = document[name]
            # JSON's true is not an integer, whatever Python says.
            if not isinstance(value, TYPES[kind]) or (isinstance(value, bool) and kind != "boolean"):
                return problem(400, "Bad Request", f"the field {name!r} must be of type {kind}")
        return http_filter.Verdict_Forward()

    def on_response(self, req: types.Request, resp: types.Response) -> types.ResponsePhase:
        return types.ResponsePhase.UNUSED
