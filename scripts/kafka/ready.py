#!/usr/bin/env python3
"""Is the Kafka broker at HOST:PORT ready? Exit 0 when it answers ApiVersions
and its Metadata lists broker NODE_ID; otherwise exit 1 and say why on one line.

    ready.py HOST:PORT NODE_ID

scripts/kafka-up calls it in a loop while the broker starts. Two fixed-format
requests (ApiVersions v0, Metadata v1) over a plain socket: the check runs
before anything is built, so it cannot use the Rust client, and a JVM admin
client would take seconds per try.
"""
import socket
import struct
import sys


def request(sock, api_key, version, correlation, body=b""):
    client = b"exactly-kafka-up"
    header = struct.pack(">hhih", api_key, version, correlation, len(client)) + client
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", read_exactly(sock, 4))[0]
    response = read_exactly(sock, size)
    (answered,) = struct.unpack_from(">i", response, 0)
    if answered != correlation:
        raise RuntimeError(f"correlation id {answered}, expected {correlation}")
    return response[4:]


def read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RuntimeError("the broker closed the connection")
        data += chunk
    return data


def brokers_in_metadata(body):
    (count,) = struct.unpack_from(">i", body, 0)
    at, nodes = 4, []
    for _ in range(count):
        node, host_len = struct.unpack_from(">ih", body, at)
        at += 6 + host_len
        _port, rack_len = struct.unpack_from(">ih", body, at)
        at += 6 + max(rack_len, 0)
        nodes.append(node)
    return nodes


def main():
    address, node = sys.argv[1], int(sys.argv[2])
    host, port = address.rsplit(":", 1)
    try:
        with socket.create_connection((host, int(port)), timeout=2) as sock:
            sock.settimeout(2)
            (error,) = struct.unpack_from(">h", request(sock, 18, 0, 1), 0)
            if error != 0:
                print(f"ApiVersions answered error code {error}")
                return 1
            nodes = brokers_in_metadata(request(sock, 3, 1, 2, struct.pack(">i", 0)))
    except (OSError, RuntimeError, struct.error) as e:
        print(f"no answer yet: {e}")
        return 1
    if node not in nodes:
        print(f"Metadata lists brokers {nodes}, not yet node {node}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
