// {{name}}: a proxy-wasm filter (the AssemblyScript SDK, ABI 0.2.1), as
// Envoy runs them; Sluice runs it unchanged. Its configuration (a string)
// names a header every request must carry: those without it get a 400.
// Replace it with your policy.
export * from "@gcoredev/proxy-wasm-sdk-as/assembly/proxy";
import {
  Context,
  FilterHeadersStatusValues,
  RootContext,
  makeHeaderPair,
  registerRootContext,
  send_http_response,
  stream_context,
} from "@gcoredev/proxy-wasm-sdk-as/assembly";

class Root extends RootContext {
  createContext(context_id: u32): Context {
    return new Filter(context_id, this);
  }
}

class Filter extends Context {
  constructor(context_id: u32, root: Root) {
    super(context_id, root);
  }

  onRequestHeaders(headers: u32, end_of_stream: bool): FilterHeadersStatusValues {
    const header = this.root_context.getConfiguration();
    if (stream_context.headers.request.get(header) != "") {
      return FilterHeadersStatusValues.Continue;
    }
    const body = String.UTF8.encode("the " + header + " header is required\n");
    send_http_response(400, "missing header", body, [makeHeaderPair("content-type", "text/plain")]);
    return FilterHeadersStatusValues.StopIteration;
  }
}

registerRootContext((context_id: u32) => {
  return new Root(context_id);
}, "{{name}}");
