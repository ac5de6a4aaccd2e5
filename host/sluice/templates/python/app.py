"""{{name}}: a Sluice filter. It refuses requests without the configured
header (400) and lets the others through. Replace it with your policy."""

import json

from componentize_py_types import Err
from wit_world import exports
from wit_world.exports import http_filter
from wit_world.imports import types


class HttpFilter(exports.HttpFilter):
    header: str

    def init(self, config: str) -> None:
        try:
            HttpFilter.header = json.loads(config)["header"]
        except (ValueError, KeyError, TypeError) as e:
            raise Err(f"{{name}}: a `header` is needed ({e})")

    def on_request(self, req: types.Request) -> http_filter.Verdict:
        if req.headers().has(HttpFilter.header):
            return http_filter.Verdict_Forward()
        body = f"the {HttpFilter.header} header is required\n".encode()
        reply = types.Reply(400, [("content-type", "text/plain")], body)
        return http_filter.Verdict_Respond(reply)

    def on_response(self, req: types.Request, resp: types.Response) -> types.ResponsePhase:
        # Tells the host not to call it on responses.
        return types.ResponsePhase.UNUSED
