/*
 * rawtransport._datapath: the compiled per-frame work of the receive and send paths.
 *
 * This module accelerates the pure-Python reference in packet_fast.py; it never replaces it.
 * Every function here has a Python twin that is the specification, and
 * tests/test_datapath.py feeds both the same bytes (hypothesis) and requires the same result.
 * When this module is absent (no compiler at install time) or RAWTRANSPORT_PURE=1 is set, the
 * Python twins run instead (rawtransport/datapath.py decides).
 *
 * The frame bytes come off the wire: they are the attacker's. Every offset and length read
 * from them is checked against the buffer's length before the bytes it names are touched.
 *
 * C11, no dependency beyond the Python headers.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <stdint.h>
#include <string.h>

#include "_datapath.h"


/* The UdpDatagram NamedTuple class (packet_types.py), handed over by datapath.py at import. */
static PyTypeObject *udp_datagram_type;

/*
 * RFC 1071 sum of len bytes, folded to 16 bits (an odd last byte is the high byte of a
 * zero-padded word, RFC 1071 4.1). The result is congruent modulo 0xFFFF to the integer that
 * packet_fast._raw() computes, which is all its callers rely on.
 */
uint32_t rt_inet_sum(const uint8_t *p, size_t len)
{
	uint64_t sum = 0;
	uint32_t a, b, c, d;
	uint16_t h;
	size_t i = 0;

	/*
	 * RFC 1071 2(B): the sum is byte-order independent, so add the bytes as they lie in
	 * memory (32-bit loads into a 64-bit accumulator, as csum_partial() does) and swap the
	 * folded result into network order at the end. memcpy() keeps the loads alignment-safe.
	 */
	for (; i + 16 <= len; i += 16) {
		memcpy(&a, p + i, 4);
		memcpy(&b, p + i + 4, 4);
		memcpy(&c, p + i + 8, 4);
		memcpy(&d, p + i + 12, 4);
		sum += (uint64_t)a + b + c + d;
	}
	for (; i + 4 <= len; i += 4) {
		memcpy(&a, p + i, 4);
		sum += a;
	}
	if (i + 2 <= len) {
		memcpy(&h, p + i, 2);
		sum += h;
		i += 2;
	}
	if (i < len) {
		/* The odd byte is the first byte in memory of a zero-padded word (RFC 1071 4.1). */
		h = 0;
		memcpy(&h, p + i, 1);
		sum += h;
	}
	while (sum >> 16)
		sum = (sum & 0xFFFF) + (sum >> 16);
#if __BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__
	sum = ((sum >> 8) | (sum << 8)) & 0xFFFF;
#endif
	return (uint32_t)sum;
}


/* One UdpDatagram from its parts; steals nothing, returns a new reference or NULL. */
static PyObject *make_datagram(const uint8_t *frame, int family, const uint8_t *src,
			       const uint8_t *dst, Py_ssize_t alen, unsigned sport, unsigned dport,
			       const uint8_t *payload, Py_ssize_t plen, unsigned ttl)
{
	PyObject *items[10];
	PyObject *dg;
	int i;

	items[0] = PyBytes_FromStringAndSize((const char *)frame, 6);
	items[1] = PyBytes_FromStringAndSize((const char *)frame + 6, 6);
	items[2] = Py_NewRef(Py_None);
	items[3] = PyLong_FromLong(family);
	items[4] = PyBytes_FromStringAndSize((const char *)src, alen);
	items[5] = PyBytes_FromStringAndSize((const char *)dst, alen);
	items[6] = PyLong_FromUnsignedLong(sport);
	items[7] = PyLong_FromUnsignedLong(dport);
	items[8] = PyBytes_FromStringAndSize((const char *)payload, plen);
	items[9] = PyLong_FromUnsignedLong(ttl);
	for (i = 0; i < 10; i++)
		if (items[i] == NULL)
			goto fail;
	/* A NamedTuple is a tuple subclass without __dict__: tp_alloc gives the tuple layout. */
	dg = udp_datagram_type->tp_alloc(udp_datagram_type, 10);
	if (dg == NULL)
		goto fail;
	for (i = 0; i < 10; i++)
		PyTuple_SET_ITEM(dg, i, items[i]);
	return dg;
fail:
	for (i = 0; i < 10; i++)
		Py_XDECREF(items[i]);
	return NULL;
}

/*
 * The fast path of packet_fast.parse_udp(): Ethernet II, no tag, IPv4 without options or IPv6
 * without extension headers, every check that path makes, in the same order. Fills *out and
 * returns 1, or returns 0 when the path declines (the caller then runs the general path, which
 * names the reason). Shared with the receive fast path (_deliver.c).
 */
int rt_parse_fast(const uint8_t *d, Py_ssize_t n, int verify, struct rt_udp *out)
{
	if (n >= ETH_HLEN + IPV4_HLEN + UDP_HLEN && d[12] == 0x08 && d[13] == 0x00 &&
	    d[14] == 0x45) {
		/* ip_rcv_core(): version 4, IHL 5 (checked above), tot_len within the frame. */
		unsigned tot = be16(d + 16), frag = be16(d + 20), proto = d[23];
		unsigned ulen = be16(d + 38), csum = be16(d + 40);
		Py_ssize_t end;

		if (proto != IPPROTO_UDP_ || (frag & 0x3FFF) || tot < 28 ||
		    (Py_ssize_t)tot > n - ETH_HLEN || ulen < 8 || ulen > tot - 20)
			return 0;
		if (!sum_is_zero(rt_inet_sum(d + 14, IPV4_HLEN)))
			return 0;
		end = 34 + (Py_ssize_t)ulen; /* <= 14 + tot <= n */
		/* __udp4_lib_rcv(): pseudo-header addresses at 26..34 run on into the segment. */
		if (csum && verify &&
		    !sum_is_zero((uint64_t)rt_inet_sum(d + 26, (size_t)(end - 26)) + IPPROTO_UDP_ +
				 ulen))
			return 0;
		out->family = 4;
		out->alen = 4;
		out->src = d + 26;
		out->dst = d + 30;
		out->sport = be16(d + 34);
		out->dport = be16(d + 36);
		out->payload = 42;
		out->plen = end - 42;
		out->ttl = d[22];
		return 1;
	}
	if (n >= ETH_HLEN + IPV6_HLEN + UDP_HLEN && d[12] == 0x86 && d[13] == 0xDD &&
	    (d[14] >> 4) == 6) {
		unsigned plen = be16(d + 18), nh = d[20];
		unsigned ulen = be16(d + 58), csum = be16(d + 60);
		Py_ssize_t end;

		/* ip6_rcv_core() / __udp6_lib_rcv(): plen within the frame, ulen within plen, and a
		 * zero UDP checksum is refused (RFC 8200 8.1) by the general path. */
		if (nh != IPPROTO_UDP_ || ulen < 8 || ulen > plen ||
		    (Py_ssize_t)plen > n - (ETH_HLEN + IPV6_HLEN) || csum == 0)
			return 0;
		end = 54 + (Py_ssize_t)ulen; /* <= 54 + plen <= n */
		if (verify &&
		    !sum_is_zero((uint64_t)rt_inet_sum(d + 22, (size_t)(end - 22)) + IPPROTO_UDP_ +
				 ulen))
			return 0;
		out->family = 6;
		out->alen = 16;
		out->src = d + 22;
		out->dst = d + 38;
		out->sport = be16(d + 54);
		out->dport = be16(d + 56);
		out->payload = 62;
		out->plen = end - 62;
		out->ttl = d[21];
		return 1;
	}
	return 0;
}

static PyObject *parse_fast(const uint8_t *d, Py_ssize_t n, int verify)
{
	struct rt_udp u;

	if (!rt_parse_fast(d, n, verify, &u))
		Py_RETURN_NONE;
	return make_datagram(d, u.family, u.src, u.dst, u.alen, u.sport, u.dport, d + u.payload,
			     u.plen, u.ttl);
}

PyDoc_STRVAR(parse_udp_fast_doc,
	     "parse_udp_fast(frame, verify_udp_checksum, /) -> UdpDatagram | None\n\n"
	     "The fast path of packet_fast.parse_udp(); None where it declines.");

static PyObject *py_parse_udp_fast(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	Py_buffer view;
	PyObject *result;
	int verify;

	(void)self;
	if (nargs != 2) {
		PyErr_SetString(PyExc_TypeError, "parse_udp_fast() takes 2 positional arguments");
		return NULL;
	}
	if (udp_datagram_type == NULL) {
		PyErr_SetString(PyExc_RuntimeError, "_datapath.init() was not called");
		return NULL;
	}
	verify = PyObject_IsTrue(args[1]);
	if (verify < 0)
		return NULL;
	if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
		return NULL;
	result = parse_fast(view.buf, view.len, verify);
	PyBuffer_Release(&view);
	return result;
}

PyDoc_STRVAR(inet_sum_doc, "inet_sum(data, /) -> int\n\n"
			   "RFC 1071 sum of data folded to 16 bits (not complemented); congruent\n"
			   "modulo 0xFFFF to packet_fast._raw(data).");

static PyObject *py_inet_sum(PyObject *self, PyObject *arg)
{
	Py_buffer view;
	uint32_t sum;

	(void)self;
	if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0)
		return NULL;
	sum = rt_inet_sum(view.buf, (size_t)view.len);
	PyBuffer_Release(&view);
	return PyLong_FromUnsignedLong(sum);
}

/* Byte-order stores for build_fast(). */
static inline void put16(uint8_t *p, unsigned v)
{
	p[0] = (uint8_t)(v >> 8);
	p[1] = (uint8_t)v;
}

static int get_u16(PyObject *o, const char *what, unsigned *out)
{
	unsigned long v = PyLong_AsUnsignedLong(o);

	if (v == (unsigned long)-1 && PyErr_Occurred()) {
		if (PyErr_ExceptionMatches(PyExc_OverflowError) ||
		    PyErr_ExceptionMatches(PyExc_TypeError)) {
			PyErr_Clear();
			PyErr_Format(PyExc_ValueError, "%s out of range", what);
		}
		return -1;
	}
	if (v > 0xFFFF) {
		PyErr_Format(PyExc_ValueError, "%s out of range", what);
		return -1;
	}
	*out = (unsigned)v;
	return 0;
}

/*
 * The UDP header at f + u and the payload after it; the checksum covers the pseudo-header's
 * addresses (the alen * 2 bytes before the UDP header, as both IP headers lay them out),
 * protocol and length, then the segment. RFC 768: a computed 0 goes out as all ones.
 */
void rt_put_udp(uint8_t *f, Py_ssize_t u, Py_ssize_t alen, unsigned sport, unsigned dport,
		    const void *payload, Py_ssize_t plen)
{
	uint32_t s, ulen = (uint32_t)(plen + UDP_HLEN);

	put16(f + u, sport);
	put16(f + u + 2, dport);
	put16(f + u + 4, ulen);
	put16(f + u + 6, 0);
	memcpy(f + u + UDP_HLEN, payload, (size_t)plen);
	s = rt_inet_sum(f + u - 2 * alen, (size_t)(2 * alen) + ulen) + IPPROTO_UDP_ + ulen;
	while (s >> 16)
		s = (s & 0xFFFF) + (s >> 16);
	put16(f + u + 6, (~s & 0xFFFF) ? (~s & 0xFFFF) : 0xFFFF);
}

/* Ethernet header at f: destination and source MAC from the buffers, then the ethertype. */
static void put_eth(uint8_t *f, const Py_buffer *dst, const Py_buffer *src, unsigned ethertype)
{
	memcpy(f, dst->buf, 6);
	memcpy(f + 6, src->buf, 6);
	put16(f + 12, ethertype);
}

/*
 * build_udp() of packet_fast.py for the send fast path's case: no VLAN tag, TOS/traffic class
 * 0, IPv4 identification 0 with DF set, flow label 0, the UDP checksum always computed. The
 * frame is written once into the bytes object that is returned.
 */
PyDoc_STRVAR(build_udp_fast_doc,
	     "build_udp_fast(eth_dst, eth_src, src, dst, src_port, dst_port, payload, ttl, /)\n"
	     "    -> bytes\n\n"
	     "packet_fast.build_udp() with its defaults (ttl is the IPv6 hop limit over IPv6).");

static PyObject *py_build_udp_fast(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	Py_buffer b[5]; /* eth_dst, eth_src, src, dst, payload */
	static const int bi[5] = {0, 1, 2, 3, 6};
	unsigned sport, dport, ttl;
	PyObject *out = NULL;
	int got = 0, i;

	(void)self;
	if (nargs != 8) {
		PyErr_SetString(PyExc_TypeError, "build_udp_fast() takes 8 positional arguments");
		return NULL;
	}
	if (get_u16(args[4], "source port", &sport) < 0 ||
	    get_u16(args[5], "destination port", &dport) < 0 || get_u16(args[7], "TTL", &ttl) < 0)
		return NULL;
	if (ttl > 0xFF) {
		PyErr_SetString(PyExc_ValueError, "TTL out of range");
		return NULL;
	}
	for (; got < 5; got++)
		if (PyObject_GetBuffer(args[bi[got]], &b[got], PyBUF_SIMPLE) < 0)
			goto done;
	if (b[0].len != 6 || b[1].len != 6) {
		PyErr_SetString(PyExc_ValueError, "MAC addresses must be 6 bytes");
		goto done;
	}
	if (b[2].len != b[3].len) {
		PyErr_SetString(PyExc_ValueError, "source and destination addresses of different families");
		goto done;
	}
	if (b[2].len == 4) {
		Py_ssize_t plen = b[4].len, tot = plen + UDP_HLEN + IPV4_HLEN;
		uint8_t *f;

		if (plen > 65535 - IPV4_HLEN - UDP_HLEN) {
			PyErr_Format(PyExc_ValueError, "UDP payload of %zd bytes exceeds 65507 over IPv4",
				     plen);
			goto done;
		}
		out = PyBytes_FromStringAndSize(NULL, ETH_HLEN + tot);
		if (out == NULL)
			goto done;
		f = (uint8_t *)PyBytes_AS_STRING(out);
		put_eth(f, &b[0], &b[1], 0x0800);
		f[14] = 0x45;
		f[15] = 0;
		put16(f + 16, (unsigned)tot);
		put16(f + 18, 0);
		put16(f + 20, 0x4000); /* DF */
		f[22] = (uint8_t)ttl;
		f[23] = IPPROTO_UDP_;
		put16(f + 24, 0);
		memcpy(f + 26, b[2].buf, 4);
		memcpy(f + 30, b[3].buf, 4);
		put16(f + 24, ~rt_inet_sum(f + 14, IPV4_HLEN) & 0xFFFF);
		rt_put_udp(f, 34, 4, sport, dport, b[4].buf, plen);
	} else if (b[2].len == 16) {
		Py_ssize_t plen = b[4].len, ulen = plen + UDP_HLEN;
		uint8_t *f;

		if (plen > 65535 - UDP_HLEN) {
			PyErr_Format(PyExc_ValueError, "UDP payload of %zd bytes exceeds 65527 over IPv6",
				     plen);
			goto done;
		}
		out = PyBytes_FromStringAndSize(NULL, ETH_HLEN + IPV6_HLEN + ulen);
		if (out == NULL)
			goto done;
		f = (uint8_t *)PyBytes_AS_STRING(out);
		put_eth(f, &b[0], &b[1], 0x86DD);
		put16(f + 14, 0x6000);
		put16(f + 16, 0);
		put16(f + 18, (unsigned)ulen);
		f[20] = IPPROTO_UDP_;
		f[21] = (uint8_t)ttl;
		memcpy(f + 22, b[2].buf, 16);
		memcpy(f + 38, b[3].buf, 16);
		rt_put_udp(f, 54, 16, sport, dport, b[4].buf, plen);
	} else {
		PyErr_Format(PyExc_ValueError, "IP addresses must be 4 or 16 bytes, got %zd", b[2].len);
	}
done:
	for (i = 0; i < got; i++)
		PyBuffer_Release(&b[i]);
	return out;
}

/*
 * The TPACKET_V2 receive ring (Documentation/networking/packet_mmap.rst, linux/if_packet.h).
 * Each slot starts with a struct tpacket2_hdr, then the struct sockaddr_ll at
 * TPACKET_ALIGN(sizeof(struct tpacket2_hdr)) = 32; the frame is at tp_mac from the slot start.
 */


PyDoc_STRVAR(v2_read_doc,
	     "v2_read(ring, index, budget, frame_count, frames_per_block, block_size, frame_size, /)\n\n"
	     "Walk a TPACKET_V2 ring from slot index as ring.V2Walker.next_frame() does, for up to\n"
	     "budget frames, giving every slot back once read. Returns (frames, index, laps,\n"
	     "corrupt): frames is a list of (data, ifindex, pkttype, status, hatype, truncated) with\n"
	     "data the frame's bytes, or None for a TP_STATUS_COPY slot (the whole frame waits in\n"
	     "the socket's queue); laps counts wraps; corrupt lists the reasons of skipped slots.");

/*
 * Take the (ring, index, budget, frame_count, frames_per_block, block_size, frame_size)
 * arguments of v2_read() and v2_deliver(). The geometry is ours (ring.RingGeometry checked it),
 * but the slot arithmetic must stay inside the buffer whatever it says: it is checked here once.
 * Returns 0, or -1 with the error set and nothing held.
 */
int rt_v2_open(struct v2_walk *w, PyObject *const *args, const char *who)
{
	if (PyObject_GetBuffer(args[0], &w->ring, PyBUF_WRITABLE) < 0)
		return -1;
	w->index = PyLong_AsSsize_t(args[1]);
	w->budget = PyLong_AsSsize_t(args[2]);
	w->count = PyLong_AsSsize_t(args[3]);
	w->per_block = PyLong_AsSsize_t(args[4]);
	w->block_size = PyLong_AsSsize_t(args[5]);
	w->frame_size = PyLong_AsSsize_t(args[6]);
	w->laps = 0;
	w->seen = 0;
	if (!PyErr_Occurred() &&
	    !v2_geometry_ok(w->ring.len, w->index, w->budget, w->count, w->per_block,
			    w->block_size, w->frame_size))
		PyErr_Format(PyExc_ValueError, "%s(): geometry outside the ring", who);
	if (PyErr_Occurred()) {
		PyBuffer_Release(&w->ring);
		return -1;
	}
	return 0;
}

/*
 * The next slot the kernel handed over, the walk moved past it; NULL when the next slot is still
 * the kernel's or a whole lap was seen (each skipped slot is given back, so at most one lap is
 * examined, as ring.V2Walker.next_frame() does). A slot whose tp_mac/tp_snaplen point outside it
 * is given back and *bad names why (the caller counts it and asks again); otherwise *bad is NULL
 * and the frame is tp_snaplen bytes at tp_mac, inside the slot.
 */
uint8_t *rt_v2_next(struct v2_walk *w, const char **bad)
{
	uint8_t *slot;
	uint32_t snaplen;
	uint16_t mac;

	*bad = NULL;
	if (w->seen >= w->count)
		return NULL;
	slot = v2_slot(w->ring.buf, w->index, w->per_block, w->block_size, w->frame_size);
	if (!(load_u32(slot) & TP_STATUS_USER))
		return NULL;
	/* tpacket_rcv() sets tp_status last (smp_wmb()): read the rest after it. */
	__atomic_thread_fence(__ATOMIC_ACQUIRE);
	w->seen++;
	if (++w->index == w->count) {
		w->index = 0;
		w->laps++;
	}
	snaplen = load_u32(slot + V2_SNAPLEN);
	mac = load_u16(slot + V2_MAC);
	if (mac < TPACKET2_HDRLEN || (Py_ssize_t)snaplen > w->frame_size - mac) {
		*bad = mac < TPACKET2_HDRLEN ? "ring_mac_offset" : "ring_frame_bounds";
		release_slot(slot);
	}
	return slot;
}

/*
 * A checked slot's frame as v2_read() returns it: (data, ifindex, pkttype, status, hatype,
 * truncated), data None for a TP_STATUS_COPY slot (the whole frame waits in the socket's queue).
 * The slot is given back either way.
 */
PyObject *rt_v2_item(uint8_t *slot)
{
	uint32_t status = rt_v2_status(slot), len = load_u32(slot + V2_LEN);
	uint32_t snaplen = load_u32(slot + V2_SNAPLEN);
	PyObject *data, *item = NULL;

	if (status & TP_STATUS_COPY)
		data = Py_NewRef(Py_None);
	else
		data = PyBytes_FromStringAndSize((const char *)slot + load_u16(slot + V2_MAC), snaplen);
	if (data != NULL)
		item = Py_BuildValue("(NiIIHO)", data, (int)load_u32(slot + V2_IFINDEX),
				     (unsigned int)slot[V2_PKTTYPE], (unsigned int)status,
				     load_u16(slot + V2_HATYPE),
				     (snaplen < len || (status & TP_STATUS_COPY)) ? Py_True : Py_False);
	release_slot(slot);
	return item;
}

/* Count a skipped slot's reason in the list; -1 with the error set when that fails. */
int rt_v2_count(PyObject *corrupt, const char *bad)
{
	PyObject *reason = PyUnicode_FromString(bad);
	int rc = reason == NULL ? -1 : PyList_Append(corrupt, reason);

	Py_XDECREF(reason);
	return rc;
}

static PyObject *py_v2_read(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	struct v2_walk w;
	PyObject *frames, *corrupt, *result = NULL;

	(void)self;
	if (nargs != 7) {
		PyErr_SetString(PyExc_TypeError, "v2_read() takes 7 arguments");
		return NULL;
	}
	if (rt_v2_open(&w, args, "v2_read") < 0)
		return NULL;
	frames = PyList_New(0);
	corrupt = PyList_New(0);
	if (frames == NULL || corrupt == NULL)
		goto out;
	while (PyList_GET_SIZE(frames) < w.budget) {
		const char *bad;
		uint8_t *slot = rt_v2_next(&w, &bad);
		PyObject *item;

		if (slot == NULL)
			break;
		if (bad != NULL) {
			if (rt_v2_count(corrupt, bad) < 0)
				goto out;
			continue;
		}
		item = rt_v2_item(slot);
		if (item == NULL || PyList_Append(frames, item) < 0) {
			Py_XDECREF(item);
			goto out;
		}
		Py_DECREF(item);
	}
	result = Py_BuildValue("(OnnO)", frames, w.index, w.laps, corrupt);
out:
	Py_XDECREF(frames);
	Py_XDECREF(corrupt);
	PyBuffer_Release(&w.ring);
	return result;
}

PyDoc_STRVAR(peek_udp_doc,
	     "peek_udp(frame, /)\n\n"
	     "host.peek_udp() in C: (src, dst, sport, dport) of an untagged Ethernet UDP frame read\n"
	     "without checks, 'fragment' for a fragment, or None for anything else.");

static PyObject *fragment_str;

static PyObject *py_peek_udp(PyObject *self, PyObject *arg)
{
	Py_buffer buf;
	const uint8_t *d;
	PyObject *result;
	Py_ssize_t n;

	(void)self;
	if (PyObject_GetBuffer(arg, &buf, PyBUF_SIMPLE) < 0)
		return NULL;
	d = buf.buf;
	n = buf.len;
	result = Py_None;
	if (n >= 42 && d[12] == 0x08 && d[13] == 0x00) {
		if (d[23] == IPPROTO_UDP_) {
			Py_ssize_t off = ETH_HLEN + ((d[14] & 0x0F) << 2);

			if ((d[20] & 0x3F) || d[21])
				result = fragment_str; /* ip_is_fragment(): MF or an offset */
			else if (off + UDP_HLEN <= n)
				result = Py_BuildValue("(y#y#ii)", d + 26, (Py_ssize_t)4, d + 30,
						       (Py_ssize_t)4, (d[off] << 8) | d[off + 1],
						       (d[off + 2] << 8) | d[off + 3]);
		}
	} else if (n >= 62 && d[12] == 0x86 && d[13] == 0xDD) {
		if (d[20] == IPPROTO_UDP_)
			result = Py_BuildValue("(y#y#ii)", d + 22, (Py_ssize_t)16, d + 38,
					       (Py_ssize_t)16, (d[54] << 8) | d[55],
					       (d[56] << 8) | d[57]);
		else if (d[20] == 44) /* an IPv6 Fragment header first */
			result = fragment_str;
	}
	PyBuffer_Release(&buf);
	if (result == Py_None || result == fragment_str)
		return Py_NewRef(result);
	return result; /* a new tuple, or NULL with the error set */
}

PyDoc_STRVAR(init_doc, "init(udp_datagram_type, /)\n\n"
		       "Hand over the UdpDatagram class the parser returns instances of.");

static PyObject *py_init(PyObject *self, PyObject *arg)
{
	PyTypeObject *type;

	(void)self;
	if (!PyType_Check(arg) || !PyType_IsSubtype((PyTypeObject *)arg, &PyTuple_Type)) {
		PyErr_SetString(PyExc_TypeError, "init() needs a tuple subclass");
		return NULL;
	}
	type = (PyTypeObject *)arg;
	/* make_datagram() fills the tuple's items directly: no __dict__, no extra slots. */
	if (type->tp_basicsize != PyTuple_Type.tp_basicsize || type->tp_dictoffset != 0) {
		PyErr_SetString(PyExc_TypeError, "init() needs a tuple subclass with __slots__ = ()");
		return NULL;
	}
	Py_XSETREF(udp_datagram_type, (PyTypeObject *)Py_NewRef(arg));
	Py_RETURN_NONE;
}

static PyMethodDef datapath_methods[] = {
	{"init", py_init, METH_O, init_doc},
	{"inet_sum", py_inet_sum, METH_O, inet_sum_doc},
	{"build_udp_fast", (PyCFunction)(void (*)(void))py_build_udp_fast, METH_FASTCALL,
	 build_udp_fast_doc},
	{"parse_udp_fast", (PyCFunction)(void (*)(void))py_parse_udp_fast, METH_FASTCALL,
	 parse_udp_fast_doc},
	{"peek_udp", py_peek_udp, METH_O, peek_udp_doc},
	{"v2_read", (PyCFunction)(void (*)(void))py_v2_read, METH_FASTCALL, v2_read_doc},
	{"v2_deliver", (PyCFunction)(void (*)(void))rt_v2_deliver, METH_FASTCALL, rt_v2_deliver_doc},
	{"deliver_frame", (PyCFunction)(void (*)(void))rt_deliver_frame, METH_FASTCALL,
	 rt_deliver_frame_doc},
	{NULL, NULL, 0, NULL},
};

static struct PyModuleDef datapath_module = {
	PyModuleDef_HEAD_INIT,
	.m_name = "rawtransport._datapath",
	.m_doc = "The compiled per-frame work of rawtransport (see packet_fast.py, its reference).",
	.m_size = -1,
	.m_methods = datapath_methods,
};

PyMODINIT_FUNC PyInit__datapath(void)
{
	PyObject *module;

	fragment_str = PyUnicode_InternFromString("fragment");
	if (fragment_str == NULL)
		return NULL;
	module = PyModule_Create(&datapath_module);
	if (module != NULL && (rt_deliver_init(module) < 0 || rt_send_init(module) < 0))
		Py_CLEAR(module);
	return module;
}
