#!/usr/bin/env python3
"""Writes the packet_path target's seeds: lab flows (client 198.18.1.10
inside, server 198.18.2.10 outside, NAT pool 198.18.2.100) in the target's
input format. Run from this folder: python3 make_packet_path.py"""
import struct, os

def csum(b):
    if len(b) % 2: b += b'\0'
    s = sum(struct.unpack('!%dH' % (len(b) // 2), b))
    while s >> 16: s = (s & 0xffff) + (s >> 16)
    return (~s) & 0xffff

def eth(payload, ethertype=0x0800, vlan=None):
    h = bytes([2, 0, 0, 0, 0, 1]) + bytes([2, 0, 0, 0, 0, 0x10])
    if vlan is not None:
        h += struct.pack('!HH', 0x8100, vlan)
    return h + struct.pack('!H', ethertype) + payload

def ip4(src, dst, proto, l4, ttl=64, frag=0):
    h = struct.pack('!BBHHHBBH4s4s', 0x45, 0, 20 + len(l4), 1, frag, ttl, proto, 0, bytes(src), bytes(dst))
    h = h[:10] + struct.pack('!H', csum(h)) + h[12:]
    return h + l4

def l4sum(src, dst, proto, seg, at):
    c = csum(bytes(src) + bytes(dst) + struct.pack('!BBH', 0, proto, len(seg)) + seg)
    return seg[:at] + struct.pack('!H', c) + seg[at + 2:]

def tcp(src, dst, sp, dp, flags, payload=b''):
    seg = struct.pack('!HHIIBBHHH', sp, dp, 100, 1 if flags & 0x10 else 0, 5 << 4, flags, 65535, 0, 0) + payload
    return ip4(src, dst, 6, l4sum(src, dst, 6, seg, 16))

def udp(src, dst, sp, dp, payload=b'x'):
    seg = struct.pack('!HHHH', sp, dp, 8 + len(payload), 0) + payload
    return ip4(src, dst, 17, l4sum(src, dst, 17, seg, 6))

def echo(src, dst, ty, ident):
    m = struct.pack('!BBHHH', ty, 0, 0, ident, 1) + b'ping'
    m = m[:2] + struct.pack('!H', csum(m)) + m[4:]
    return ip4(src, dst, 1, m)

def ip6(src, dst, nh, l4, hop=64):
    return struct.pack('!IHBB16s16s', 6 << 28, len(l4), nh, hop, src, dst) + l4

C, S, P = [198, 18, 1, 10], [198, 18, 2, 10], [198, 18, 2, 100]
C6 = bytes.fromhex('20010db8000100000000000000000010')
S6 = bytes.fromhex('20010db8000200000000000000000010')

def frame(outside, secs, f):
    return bytes([(secs << 1) | int(outside)]) + struct.pack('!H', len(f)) + f

def write(name, setup, frames):
    with open(os.path.join('packet_path', name), 'wb') as out:
        out.write(bytes([setup]) + b''.join(frames))

os.makedirs('packet_path', exist_ok=True)
for worker in (0, 1):
    setup = 0b011 | worker << 2   # services, a flow table, this worker
    # A TCP handshake, translated to the pool's first ports, data, FIN.
    write(f'tcp-w{worker}', setup, [
        frame(0, 0, eth(tcp(C, S, 40000, 80, 0x02))),
        frame(1, 0, eth(tcp(S, P, 80, 1024 + 64 * worker, 0x12))),
        frame(0, 0, eth(tcp(C, S, 40000, 80, 0x10, b'GET /'))),
        frame(0, 1, eth(tcp(C, S, 40000, 80, 0x11))),
    ])
    write(f'udp-w{worker}', setup, [
        frame(0, 0, eth(udp(C, S, 5353, 53))),
        frame(1, 0, eth(udp(S, P, 53, 1024 + 64 * worker))),
        frame(0, 30, eth(udp(C, S, 5353, 53))),
    ])
    write(f'echo-w{worker}', setup, [
        frame(0, 0, eth(echo(C, S, 8, 7))),
        frame(1, 0, eth(echo(S, P, 0, 1024 + 64 * worker))),
    ])
# An ICMP time exceeded from a router outside, about a translated datagram.
quoted = udp(P, S, 1024, 53)[:28]
te = struct.pack('!BBHI', 11, 0, 0, 0) + quoted
te = te[:2] + struct.pack('!H', csum(te)) + te[4:]
write('icmp-error', 0b011, [
    frame(0, 0, eth(udp(C, S, 5353, 53))),
    frame(1, 0, eth(ip4([198, 18, 2, 1], P, 1, te))),
])
# IPv6 TCP (no NAT), tagged frames, a TTL of 1, a fragment, an unresolved
# neighbour, routing only.
tcp6 = struct.pack('!HHIIBBHHH', 40000, 443, 1, 0, 5 << 4, 0x02, 65535, 0, 0)
write('v6-tagged', 0b011, [
    frame(0, 0, eth(ip6(C6, S6, 6, tcp6), 0x86dd)),
    frame(0, 0, eth(tcp(C, S, 40001, 80, 0x02), vlan=7)),
    frame(0, 0, eth(udp(C, S, 1, 2), vlan=7)),
])
write('routing-only', 0b000, [
    frame(0, 0, eth(udp(C, S, 1000, 2000))),
    frame(0, 0, eth(udp(C, S, 1000, 2000)[:8] + bytes([1]) + udp(C, S, 1000, 2000)[9:])),
    frame(0, 0, eth(udp(C, [198, 18, 2, 77], 1, 2))),
    frame(0, 0, eth(ip4(C, S, 17, b'\0' * 16, frag=0x2001))),
])
write('reject', 0b11011, [
    frame(1, 0, eth(tcp(S, C, 1234, 22, 0x02))),
    frame(1, 0, eth(udp(S, C, 1234, 53))),
])
