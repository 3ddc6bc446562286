/*
 * What the two halves of rawtransport._datapath share: the codec (_datapath.c) and the receive
 * fast path (_deliver.c). See _datapath.c for the rules both follow.
 */
#ifndef RAWTRANSPORT_DATAPATH_H
#define RAWTRANSPORT_DATAPATH_H

#include <Python.h>

#include <stdint.h>
#include <string.h>

#define ETH_HLEN 14
#define IPV4_HLEN 20
#define IPV6_HLEN 40
#define UDP_HLEN 8
#define IPPROTO_UDP_ 17

/*
 * The TPACKET_V2 receive ring (Documentation/networking/packet_mmap.rst, linux/if_packet.h).
 * Each slot starts with a struct tpacket2_hdr, then the struct sockaddr_ll at
 * TPACKET_ALIGN(sizeof(struct tpacket2_hdr)) = 32; the frame is at tp_mac from the slot start.
 */
#define TP_STATUS_KERNEL 0x0
#define TP_STATUS_USER 0x1
#define TP_STATUS_COPY 0x2
#define TP_STATUS_CSUMNOTREADY 0x8
#define TP_STATUS_VLAN_VALID 0x10
#define TP_STATUS_CSUM_VALID 0x80
#define V2_LEN 4
#define V2_SNAPLEN 8
#define V2_MAC 12
#define V2_VLAN_TCI 24
#define V2_IFINDEX (32 + 4)
#define V2_HATYPE (32 + 8)
#define V2_PKTTYPE (32 + 10)
#define TPACKET2_HDRLEN (32 + 20)

/* A UDP datagram rt_parse_fast() found: pointers into the frame, offsets from its start. */
struct rt_udp {
	int family;		/* 4 or 6 */
	Py_ssize_t alen;	/* 4 or 16 */
	const uint8_t *src;	/* alen bytes */
	const uint8_t *dst;	/* alen bytes */
	unsigned sport, dport, ttl;
	Py_ssize_t payload;	/* offset of the UDP payload in the frame */
	Py_ssize_t plen;	/* its length, from the UDP header */
};

/* A TPACKET_V2 ring being walked by v2_read() or v2_deliver() (_datapath.c). */
struct v2_walk {
	Py_buffer ring;
	Py_ssize_t index, budget, count, per_block, block_size, frame_size;
	Py_ssize_t laps; /* wraps past the last slot */
	Py_ssize_t seen; /* slots taken, at most one lap */
};

int rt_v2_open(struct v2_walk *w, PyObject *const *args, const char *who);
uint8_t *rt_v2_next(struct v2_walk *w, const char **bad);
PyObject *rt_v2_item(uint8_t *slot);
int rt_v2_count(PyObject *corrupt, const char *bad);

uint32_t rt_inet_sum(const uint8_t *p, size_t len);
void rt_put_udp(uint8_t *f, Py_ssize_t u, Py_ssize_t alen, unsigned sport, unsigned dport,
		const void *payload, Py_ssize_t plen);
int rt_parse_fast(const uint8_t *d, Py_ssize_t n, int verify, struct rt_udp *out);

/* _deliver.c */
extern PyTypeObject rt_fast_entry_type;
extern PyTypeObject rt_fast_host_type;
PyObject *rt_v2_deliver(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
extern const char rt_v2_deliver_doc[];
PyObject *rt_deliver_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs);
extern const char rt_deliver_frame_doc[];
int rt_deliver_init(PyObject *module);

/* _send.c */
int rt_send_init(PyObject *module);

/* x mod 0xFFFF == 0: the test packet_fast.py writes as ``... % 0xFFFF == 0``. */
static inline int sum_is_zero(uint64_t x)
{
	return x % 0xFFFF == 0;
}

static inline unsigned be16(const uint8_t *p)
{
	return (unsigned)p[0] << 8 | p[1];
}

static inline uint32_t load_u32(const uint8_t *p)
{
	uint32_t v;

	memcpy(&v, p, 4);
	return v;
}

static inline uint16_t load_u16(const uint8_t *p)
{
	uint16_t v;

	memcpy(&v, p, 2);
	return v;
}

/*
 * A slot's tp_status as the Python walker reads it (ring.py, untag_priority()): a priority tag
 * (VLAN id 0) reads as no tag, as __netif_receive_skb_core() clears such a tag and delivers the
 * frame; only a tag with a VLAN id keeps TP_STATUS_VLAN_VALID (no VLAN device: dropped).
 */
static inline uint32_t rt_v2_status(const uint8_t *slot)
{
	uint32_t status = load_u32(slot);

	if ((status & TP_STATUS_VLAN_VALID) && (load_u16(slot + V2_VLAN_TCI) & 0x0FFF) == 0)
		status &= ~(uint32_t)TP_STATUS_VLAN_VALID;
	return status;
}

/* Give a slot back: everything read from it happens before the kernel may refill it. */
static inline void release_slot(uint8_t *slot)
{
	uint32_t kernel = TP_STATUS_KERNEL;

	__atomic_thread_fence(__ATOMIC_RELEASE);
	memcpy(slot, &kernel, 4);
}

/*
 * The slot geometry check v2_read() and v2_deliver() make before touching the ring: the slot
 * arithmetic must stay inside the buffer whatever the caller says. 0 when it does not.
 */
static inline int v2_geometry_ok(Py_ssize_t len, Py_ssize_t index, Py_ssize_t budget,
				 Py_ssize_t count, Py_ssize_t per_block, Py_ssize_t block_size,
				 Py_ssize_t frame_size)
{
	return !(count < 1 || per_block < 1 || frame_size < TPACKET2_HDRLEN || block_size < 1 ||
		 frame_size > len || block_size > len || count > len ||
		 per_block > block_size / frame_size || index < 0 || index >= count || budget < 0 ||
		 /* The last slot ends inside the buffer (all operands <= len: no overflow). */
		 ((count - 1) / per_block) * block_size + ((count - 1) % per_block) * frame_size >
			 len - frame_size);
}

static inline uint8_t *v2_slot(uint8_t *ring, Py_ssize_t index, Py_ssize_t per_block,
			       Py_ssize_t block_size, Py_ssize_t frame_size)
{
	return ring + (index / per_block) * block_size + (index % per_block) * frame_size;
}

#endif
