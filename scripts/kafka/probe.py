#!/usr/bin/env python3
"""Questions scripts/kafka-up asks the secured broker and the three-broker
cluster while they start, over a plain socket or TLS.

    probe.py ready ADDR NODE_ID [--in-isr] [--tls CA CERT KEY]
        exit 0 when ADDR answers ApiVersions and its Metadata lists broker
        NODE_ID; with --in-isr, also when NODE_ID is in the ISR of every
        partition that has it as a replica and has a leader. Otherwise
        exit 1 and say why on one line.
    probe.py coordinators ADDR
        exit 0 when FindCoordinator answers for a group and for a
        transactional id, which creates __consumer_offsets and
        __transaction_state if they do not exist yet.
    probe.py leader ADDR TOPIC PARTITION
        print the node id of the partition's leader (-1: none).
    probe.py coordinator ADDR TRANSACTIONAL_ID
        print the node id of the transaction coordinator of the id.

Fixed-format requests (ApiVersions v0, Metadata v1, FindCoordinator v1), as
in ready.py: the checks run before anything is built, and a JVM admin client
would take seconds per try. --tls CA CERT KEY: PEM files; the key
unencrypted. The server's certificate must name the host of ADDR.
"""
import argparse
import socket
import ssl
import struct
import sys

CLIENT_ID = b"exactly-kafka-up"


class Reader:
    def __init__(self, data):
        self.data, self.at = data, 0

    def take(self, fmt):
        values = struct.unpack_from(fmt, self.data, self.at)
        self.at += struct.calcsize(fmt)
        return values if len(values) > 1 else values[0]

    def string(self):
        size = self.take(">h")
        if size < 0:
            return None
        text = self.data[self.at : self.at + size].decode()
        self.at += size
        return text

    def int32s(self):
        return [self.take(">i") for _ in range(self.take(">i"))]


def connect(address, tls):
    host, port = address.rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=3)
    sock.settimeout(3)
    if tls:
        ca, cert, key = tls
        context = ssl.create_default_context(cafile=ca)
        context.load_cert_chain(cert, key)
        sock = context.wrap_socket(sock, server_hostname=host)
    return sock


def read_exactly(sock, n):
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            raise RuntimeError("the broker closed the connection")
        data += chunk
    return data


def request(sock, api_key, version, correlation, body=b""):
    header = struct.pack(">hhih", api_key, version, correlation, len(CLIENT_ID)) + CLIENT_ID
    payload = header + body
    sock.sendall(struct.pack(">i", len(payload)) + payload)
    size = struct.unpack(">i", read_exactly(sock, 4))[0]
    response = Reader(read_exactly(sock, size))
    answered = response.take(">i")
    if answered != correlation:
        raise RuntimeError(f"correlation id {answered}, expected {correlation}")
    return response


def string(text):
    data = text.encode()
    return struct.pack(">h", len(data)) + data


def metadata(sock, topics=None):
    """Metadata v1: (broker ids, [(topic, partition, error, leader, replicas, isr)])."""
    if topics is None:
        body = struct.pack(">i", -1)
    else:
        body = struct.pack(">i", len(topics)) + b"".join(string(t) for t in topics)
    r = request(sock, 3, 1, 2, body)
    brokers = []
    for _ in range(r.take(">i")):
        brokers.append(r.take(">i"))
        r.string()
        r.take(">i")
        r.string()
    r.take(">i")  # controller id
    partitions = []
    for _ in range(r.take(">i")):
        topic_error = r.take(">h")
        name = r.string()
        r.take(">b")  # is_internal
        for _ in range(r.take(">i")):
            error, index, leader = r.take(">hii")
            replicas, isr = r.int32s(), r.int32s()
            partitions.append((name, index, error or topic_error, leader, replicas, isr))
    return brokers, partitions


def find_coordinator(sock, key, key_type):
    """FindCoordinator v1: (error code, node id)."""
    r = request(sock, 10, 1, 3, string(key) + struct.pack(">b", key_type))
    r.take(">i")  # throttle
    error = r.take(">h")
    r.string()
    return error, r.take(">i")


def ready(args):
    tls = args.tls
    with connect(args.address, tls) as sock:
        error = request(sock, 18, 0, 1).take(">h")
        if error != 0:
            return f"ApiVersions answered error code {error}"
        brokers, partitions = metadata(sock)
    if args.node not in brokers:
        return f"Metadata lists brokers {sorted(brokers)}, not yet node {args.node}"
    if args.in_isr:
        behind = [
            f"{name}-{index}"
            for name, index, _, leader, replicas, isr in partitions
            if args.node in replicas and leader >= 0 and args.node not in isr
        ]
        if behind:
            shown = ", ".join(sorted(behind)[:5]) + (" ..." if len(behind) > 5 else "")
            return f"node {args.node} is not yet in the ISR of {len(behind)} partition(s): {shown}"
    return None


def coordinators(args):
    with connect(args.address, None) as sock:
        for key_type, what in ((0, "group"), (1, "transactional id")):
            error, _ = find_coordinator(sock, "exactly-kafka-up", key_type)
            if error != 0:
                return f"FindCoordinator for a {what} answered error code {error}"
    return None


def leader(args):
    with connect(args.address, None) as sock:
        _, partitions = metadata(sock, [args.topic])
    for name, index, error, node, _, _ in partitions:
        if name == args.topic and index == args.partition:
            if error not in (0, 5, 9):  # none, LEADER_NOT_AVAILABLE, REPLICA_NOT_AVAILABLE
                return f"Metadata for {args.topic}-{index} answered error code {error}"
            print(node)
            return None
    return f"Metadata lists no partition {args.topic}-{args.partition}"


def coordinator(args):
    with connect(args.address, None) as sock:
        error, node = find_coordinator(sock, args.transactional_id, 1)
    if error != 0:
        return f"FindCoordinator answered error code {error}"
    print(node)
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    commands = parser.add_subparsers(dest="command", required=True)
    p = commands.add_parser("ready")
    p.add_argument("address")
    p.add_argument("node", type=int)
    p.add_argument("--in-isr", action="store_true")
    p.add_argument("--tls", nargs=3, metavar=("CA", "CERT", "KEY"))
    p.set_defaults(run=ready)
    p = commands.add_parser("coordinators")
    p.add_argument("address")
    p.set_defaults(run=coordinators)
    p = commands.add_parser("leader")
    p.add_argument("address")
    p.add_argument("topic")
    p.add_argument("partition", type=int)
    p.set_defaults(run=leader)
    p = commands.add_parser("coordinator")
    p.add_argument("address")
    p.add_argument("transactional_id")
    p.set_defaults(run=coordinator)
    args = parser.parse_args()
    try:
        why = args.run(args)
    except (OSError, RuntimeError, struct.error, UnicodeDecodeError) as e:
        why = f"no answer yet: {e}"
    if why:
        print(why)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
