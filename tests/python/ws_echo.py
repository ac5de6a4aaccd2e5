"""A real WebSocket server and client (the websockets library). `serve`
prints its port; `talk HOST:PORT` sends two messages through whatever
listens there and prints the answers."""
import asyncio
import sys

from websockets.asyncio.server import serve as listen
from websockets.sync.client import connect


async def echo(socket):
    async for message in socket:
        await socket.send("echo:" + message)


async def serve():
    async with listen(echo, "127.0.0.1", 0) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.get_running_loop().create_future()


def talk(target):
    with connect(f"ws://{target}/chat", open_timeout=10) as socket:
        for message in ["one", "two"]:
            socket.send(message)
            print(socket.recv(timeout=10))


if __name__ == "__main__":
    asyncio.run(serve()) if sys.argv[1] == "serve" else talk(sys.argv[2])
