"""A real gRPC server and client (grpcio), without generated code: the
method handles raw bytes. `serve` prints its port; `call HOST:PORT` calls
through whatever listens there and prints what came back; `trailers
HOST:PORT` prints one reply and its `x-` trailers."""
import sys
from concurrent import futures

import grpc


def say(request, context):
    context.set_trailing_metadata((("x-echo-trailer", "kept"),))
    if request == b"fail":
        context.abort(grpc.StatusCode.NOT_FOUND, "no such thing")
    return b"echo:" + request


def serve():
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
    handler = grpc.method_handlers_generic_handler(
        "test.Echo", {"Say": grpc.unary_unary_rpc_method_handler(say)}
    )
    server.add_generic_rpc_handlers((handler,))
    port = server.add_insecure_port("127.0.0.1:0")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def call(target):
    with grpc.insecure_channel(target) as channel:
        method = channel.unary_unary("/test.Echo/Say")
        reply, outcome = method.with_call(b"hello", timeout=10)
        trailers = dict(outcome.trailing_metadata())
        print(reply.decode(), trailers.get("x-echo-trailer"))
        try:
            method(b"fail", timeout=10)
        except grpc.RpcError as error:
            print(error.code().name, error.details())


def trailers(target):
    """One call; the reply and its `x-` trailers, sorted."""
    with grpc.insecure_channel(target) as channel:
        method = channel.unary_unary("/test.Echo/Say")
        reply, outcome = method.with_call(b"hello", timeout=10)
        kept = sorted(f"{k}={v}" for k, v in outcome.trailing_metadata() if k.startswith("x-"))
        print(reply.decode(), " ".join(kept))


if __name__ == "__main__":
    verbs = {"call": call, "trailers": trailers}
    serve() if sys.argv[1] == "serve" else verbs[sys.argv[1]](sys.argv[2])
