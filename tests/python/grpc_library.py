"""A real gRPC service (grpcio) from tests/fixtures/proto/library/v1, whose
.proto files import each other and google/api/annotations.proto; its code is
generated at start with grpcio-tools. `serve [PORT]` prints its port; `web URL`
makes gRPC-Web calls (written against grpc/grpc's PROTOCOL-WEB, sent with
curl) through a gateway and prints what came back; `grpc HOST:PORT` makes
one native gRPC call."""
import base64
import struct
import subprocess
import sys
import tempfile
from concurrent import futures
from pathlib import Path

import grpc
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTOS = ROOT / "tests" / "fixtures" / "proto"
GOOGLE_API = ROOT / "host" / "proxy" / "src" / "translate"


def generate():
    out = tempfile.mkdtemp(prefix="library-pb-")
    wkt = Path(protoc.__file__).parent / "_proto"
    files = ["library/v1/library.proto", "library/v1/book.proto",
             "google/api/annotations.proto", "google/api/http.proto"]
    args = ["protoc", f"-I{PROTOS}", f"-I{GOOGLE_API}", f"-I{wkt}",
            f"--python_out={out}", f"--grpc_python_out={out}", *files]
    if protoc.main(args) != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)


generate()
from library.v1 import book_pb2, library_pb2, library_pb2_grpc  # noqa: E402


def asked_by(context):
    return dict(context.invocation_metadata()).get("x-user", "")


class Library(library_pb2_grpc.LibraryServicer):
    def GetBook(self, request, context):
        if request.id == 404:
            context.abort(grpc.StatusCode.NOT_FOUND, f"no book 404 on shelf {request.shelf}")
        context.set_trailing_metadata((("x-served-by", "library"),))
        return book_pb2.Book(shelf=request.shelf, id=request.id, title=f"Book {request.id}",
                             tags=["a", "b"], genre=book_pb2.FICTION, asked_by=asked_by(context))

    def CreateBook(self, request, context):
        book = book_pb2.Book()
        book.CopyFrom(request.book)
        book.shelf = request.shelf
        book.id = 42
        book.asked_by = asked_by(context)
        if request.dry_run:
            book.title += " (dry run)"
        return book

    def ListBooks(self, request, context):
        for i in range(request.limit):
            yield book_pb2.Book(shelf=request.shelf, id=i + 1, title=f"Book {i + 1}")
        if request.fail_after:
            context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "shelf closed")

    def CountBooks(self, request, context):
        return library_pb2.CountBooksReply(count=10 * len(request.shelves))


def serve(port="0"):
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=8))
    library_pb2_grpc.add_LibraryServicer_to_server(Library(), server)
    port = server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    print(port, flush=True)
    server.wait_for_termination()


def web_call(base, method, request, text, http2):
    """One gRPC-Web call: the messages and the trailers that came back."""
    kind = "application/grpc-web-text+proto" if text else "application/grpc-web+proto"
    message = request.SerializeToString()
    body = struct.pack(">BI", 0, len(message)) + message
    if text:
        body = base64.b64encode(body)
    version = "--http2-prior-knowledge" if http2 else "--http1.1"
    with tempfile.NamedTemporaryFile() as reply:
        done = subprocess.run(
            ["curl", "-s", version, "-X", "POST", "--data-binary", "@-",
             "-H", f"content-type: {kind}", "-H", "x-grpc-web: 1", "-H", "x-user: web",
             "-w", "%{content_type}", "-o", reply.name,
             f"{base}/library.v1.Library/{method}"],
            input=body, capture_output=True, check=True,
        )
        content_type = done.stdout.decode()
        data = Path(reply.name).read_bytes()
    if content_type != kind:
        sys.exit(f"answered as {content_type!r}, not {kind!r}")
    if text:
        data = base64.b64decode(data)
    messages, trailers = [], {}
    while data:
        flags, length = struct.unpack(">BI", data[:5])
        payload, data = data[5:5 + length], data[5 + length:]
        if flags & 0x80:
            for line in payload.decode().split("\r\n"):
                if line:
                    name, value = line.split(":", 1)
                    trailers[name.strip()] = value.strip()
        else:
            messages.append(book_pb2.Book.FromString(payload))
    return messages, trailers


def web(base):
    for text in (False, True):
        for http2 in (False, True):
            books, trailers = web_call(base, "GetBook", library_pb2.GetBookRequest(shelf="s", id=7),
                                       text, http2)
            print("get", [(b.title, b.asked_by) for b in books], trailers.get("grpc-status"),
                  trailers.get("x-served-by"))
    books, trailers = web_call(base, "ListBooks", library_pb2.ListBooksRequest(shelf="s", limit=3),
                               True, False)
    print("list", [b.title for b in books], trailers.get("grpc-status"))
    books, trailers = web_call(base, "ListBooks",
                               library_pb2.ListBooksRequest(shelf="s", limit=2, fail_after=True),
                               False, True)
    print("list", [b.title for b in books], trailers.get("grpc-status"), trailers.get("grpc-message"))


def native(target):
    with grpc.insecure_channel(target) as channel:
        stub = library_pb2_grpc.LibraryStub(channel)
        book = stub.GetBook(library_pb2.GetBookRequest(shelf="s", id=9), metadata=(("x-user", "grpc"),))
        print("grpc", book.title, book.asked_by)


if __name__ == "__main__":
    if sys.argv[1] == "serve":
        serve(*sys.argv[2:])
    else:
        {"web": web, "grpc": native}[sys.argv[1]](sys.argv[2])
