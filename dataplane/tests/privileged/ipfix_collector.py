#!/usr/bin/env python3
"""An IPFIX collector for the event log's test: decodes every message it
receives on UDP ADDR:PORT with PyPI's `netflow` package (templates
learned from the stream, as a collector would) and prints one JSON line
per data record, addresses dotted. Stops after SECONDS, or when killed.
Usage: ipfix_collector.py ADDR PORT SECONDS"""
import ipaddress
import json
import socket
import sys
import time

import netflow.ipfix as ipfix

ADDRESSES = {
    "sourceIPv4Address",
    "destinationIPv4Address",
    "postNATSourceIPv4Address",
    "postNATDestinationIPv4Address",
}


def main():
    addr, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((addr, port))
    print(json.dumps({"listening": port}), flush=True)
    until = time.monotonic() + seconds
    templates = {}
    while time.monotonic() < until:
        s.settimeout(max(0.01, until - time.monotonic()))
        try:
            data, _ = s.recvfrom(65535)
        except socket.timeout:
            continue
        try:
            msg = ipfix.IPFIXExportPacket(data, templates)
        except Exception as e:  # a malformed or undecodable message
            print(json.dumps({"error": repr(e)}), flush=True)
            continue
        head = {"sequence": msg.header.sequence_number, "domain": msg.header.obervation_domain_id}
        for flow in msg.flows:
            rec = dict(flow.data)
            for k in ADDRESSES & rec.keys():
                rec[k] = str(ipaddress.IPv4Address(rec[k]))
            rec.update(head)
            print(json.dumps(rec), flush=True)


main()
