/*
 * rawtransport._datapath, the receive fast path: datagrams go from the TPACKET_V2 ring straight
 * to the protocol's datagram_received(), in one C call per readiness wake-up.
 *
 * The pure-Python receive path is the reference: Host.receive_frame() (host.py) finds the
 * endpoint, UdpEngine.receive_frame() (engine.py) makes every check, the transport calls the
 * protocol. This path takes a frame only when that path would certainly have delivered it, with
 * nothing else to do: a frame for the one endpoint bound to its port (a FastEntry in the
 * FastHost's table), PACKET_HOST, whole, untagged, the common IPv4/IPv6 UDP form rt_parse_fast()
 * accepts, and addresses that pass the receive checks. It then counts it, copies the payload
 * out, builds the address tuple (from a small per-endpoint cache) and calls the protocol.
 *
 * Every other frame is handed back to the Python path, one at a time and in ring order (the walk
 * stops there), so each endpoint sees its datagrams in the order they arrived whichever path
 * took them. tests/test_deliver.py holds the two paths to the same outcomes (hypothesis).
 *
 * The ring is memory the kernel writes and the frames are the attacker's: the slot's tp_mac and
 * tp_snaplen are checked against the slot before the frame is touched, and rt_parse_fast()
 * checks every length in the frame against the frame.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <stdint.h>
#include <string.h>

#include "_datapath.h"

#define PACKET_HOST_ 0
#define ARPHRD_ETHER_ 1
/* link_drop() in host.py: link header + a VLAN tag of slack when the MTU is not known. */
#define RX_LIMIT_DEFAULT 65600
/* Address tuples cached per endpoint (a power of two): one slot per hash of the source. */
#define PEER_SLOTS 64
/* Local addresses the fast path can hold; with more, every frame takes the Python path. */
#define LOCAL_MAX 64

static const uint8_t v6_loopback[16] = {[15] = 1};

/* ------------------------------------------------------------------------------ FastEntry */

struct peer_slot {
	PyObject *addr; /* the address tuple, or NULL while the slot is empty */
	int ifindex;
	unsigned port;
	Py_ssize_t alen;
	uint8_t ip[16];
};

/*
 * One endpoint as the fast path sees it: what it is bound and connected to (its EndpointConfig)
 * and the protocol to deliver to. ``protocol`` is None while the transport is not plainly
 * reading (paused, closing, datagrams held): its frames then all take the Python path.
 */
typedef struct {
	PyObject_HEAD
	int family;	       /* 4 or 6: the frames it takes (a dual-stack socket's IPv4 does not) */
	int ifindex;	       /* the bound device, or 0 */
	Py_ssize_t local_len;  /* 0: bound to the wildcard address */
	uint8_t local[16];
	Py_ssize_t remote_len; /* 0: not connected */
	uint8_t remote[16];
	unsigned remote_port;
	PyObject *protocol;    /* NULL: deliver nothing here */
	PyObject *report;      /* report(exc): an exception the protocol raised */
	PyObject *peer;	       /* peer(src, port, ifindex) -> address tuple, on a cache miss */
	Py_ssize_t taken;      /* frames delivered here: each received and delivered */
	struct peer_slot cache[PEER_SLOTS];
} FastEntry;

static int copy_addr(PyObject *o, Py_ssize_t want, uint8_t *out, Py_ssize_t *len,
		     const char *what)
{
	if (o == Py_None) {
		*len = 0;
		return 0;
	}
	if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) != want) {
		PyErr_Format(PyExc_ValueError, "%s must be None or %zd bytes", what, want);
		return -1;
	}
	memcpy(out, PyBytes_AS_STRING(o), (size_t)want);
	*len = want;
	return 0;
}

static int entry_init(FastEntry *self, PyObject *args, PyObject *kwds)
{
	static char *kwlist[] = {"family", "local_ip", "remote_ip", "remote_port", "ifindex",
				 "peer",   "report",   NULL};
	PyObject *local, *remote, *peer, *report;
	int family, remote_port, ifindex;

	if (!PyArg_ParseTupleAndKeywords(args, kwds, "iOOiiOO:FastEntry", kwlist, &family, &local,
					 &remote, &remote_port, &ifindex, &peer, &report))
		return -1;
	if (family != 4 && family != 6) {
		PyErr_SetString(PyExc_ValueError, "family must be 4 or 6");
		return -1;
	}
	if (remote_port < 0 || remote_port > 0xFFFF || ifindex < 0) {
		PyErr_SetString(PyExc_ValueError, "remote_port or ifindex out of range");
		return -1;
	}
	if (!PyCallable_Check(peer) || !PyCallable_Check(report)) {
		PyErr_SetString(PyExc_TypeError, "peer and report must be callable");
		return -1;
	}
	if (copy_addr(local, family == 4 ? 4 : 16, self->local, &self->local_len, "local_ip") < 0 ||
	    copy_addr(remote, family == 4 ? 4 : 16, self->remote, &self->remote_len, "remote_ip") < 0)
		return -1;
	self->family = family;
	self->remote_port = (unsigned)remote_port;
	self->ifindex = ifindex;
	Py_XSETREF(self->peer, Py_NewRef(peer));
	Py_XSETREF(self->report, Py_NewRef(report));
	return 0;
}

static int entry_traverse(FastEntry *self, visitproc visit, void *arg)
{
	Py_VISIT(self->protocol);
	Py_VISIT(self->report);
	Py_VISIT(self->peer);
	return 0;
}

static int entry_clear(FastEntry *self)
{
	Py_CLEAR(self->protocol);
	Py_CLEAR(self->report);
	Py_CLEAR(self->peer);
	for (int i = 0; i < PEER_SLOTS; i++)
		Py_CLEAR(self->cache[i].addr);
	return 0;
}

static void entry_dealloc(FastEntry *self)
{
	PyObject_GC_UnTrack(self);
	entry_clear(self);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *entry_get_protocol(FastEntry *self, void *closure)
{
	(void)closure;
	return Py_NewRef(self->protocol ? self->protocol : Py_None);
}

static int entry_set_protocol(FastEntry *self, PyObject *value, void *closure)
{
	(void)closure;
	if (value == NULL || value == Py_None)
		Py_CLEAR(self->protocol);
	else
		Py_XSETREF(self->protocol, Py_NewRef(value));
	return 0;
}

static PyGetSetDef entry_getset[] = {
	{"protocol", (getter)entry_get_protocol, (setter)entry_set_protocol,
	 "The protocol whose datagram_received() the fast path calls, or None: every frame for "
	 "this endpoint takes the Python path.",
	 NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef entry_members[] = {
	{"taken", T_PYSSIZET, offsetof(FastEntry, taken), READONLY,
	 "Frames the fast path delivered here (each counts as received and delivered)."},
	{NULL, 0, 0, 0, NULL},
};

PyTypeObject rt_fast_entry_type = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "rawtransport._datapath.FastEntry",
	.tp_basicsize = sizeof(FastEntry),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
	.tp_doc = "FastEntry(family, local_ip, remote_ip, remote_port, ifindex, peer, report)\n\n"
		  "One endpoint in a FastHost's table (host.py keeps it in step with the engine).",
	.tp_new = PyType_GenericNew,
	.tp_init = (initproc)entry_init,
	.tp_dealloc = (destructor)entry_dealloc,
	.tp_traverse = (traverseproc)entry_traverse,
	.tp_clear = (inquiry)entry_clear,
	.tp_getset = entry_getset,
	.tp_members = entry_members,
};

/* The address tuple for (src, port, ifindex): from the cache, else from entry->peer. */
static PyObject *peer_addr(FastEntry *e, const struct rt_udp *u, int ifindex)
{
	uint32_t h = 2166136261u; /* FNV-1a */
	struct peer_slot *ps;
	PyObject *src, *port, *index, *addr;

	for (Py_ssize_t i = 0; i < u->alen; i++)
		h = (h ^ u->src[i]) * 16777619u;
	h = (h ^ u->sport) * 16777619u;
	h = (h ^ (uint32_t)ifindex) * 16777619u;
	ps = &e->cache[(h ^ (h >> 16)) & (PEER_SLOTS - 1)];
	if (ps->addr != NULL && ps->port == u->sport && ps->ifindex == ifindex &&
	    ps->alen == u->alen && memcmp(ps->ip, u->src, (size_t)u->alen) == 0)
		return Py_NewRef(ps->addr);
	src = PyBytes_FromStringAndSize((const char *)u->src, u->alen);
	port = PyLong_FromUnsignedLong(u->sport);
	index = PyLong_FromLong(ifindex);
	addr = (src && port && index) ? PyObject_CallFunctionObjArgs(e->peer, src, port, index, NULL)
				      : NULL;
	Py_XDECREF(src);
	Py_XDECREF(port);
	Py_XDECREF(index);
	if (addr == NULL)
		return NULL;
	Py_XSETREF(ps->addr, Py_NewRef(addr));
	ps->port = u->sport;
	ps->ifindex = ifindex;
	ps->alen = u->alen;
	memcpy(ps->ip, u->src, (size_t)u->alen);
	return addr;
}

/* ------------------------------------------------------------------------------- FastHost */

/*
 * The fast path's view of a Host: the table (port -> FastEntry, only ports one endpoint is bound
 * to), the host's addresses (LocalAddresses) and the links' receive limits (Host.rx_limit).
 */
typedef struct {
	PyObject_HEAD
	PyObject *entries;  /* dict: port -> FastEntry */
	PyObject *rx_limit; /* dict: ifindex -> the longest frame the link takes */
	Py_ssize_t taken;   /* frames delivered by the fast path (the host's "received") */
	int local_ok;	    /* 0 when the addresses did not fit: everything takes the Python path */
	Py_ssize_t n4, n6, nnets;
	uint8_t local4[LOCAL_MAX][4];
	uint8_t local6[LOCAL_MAX][16];
	uint32_t nets[LOCAL_MAX][2]; /* (network, netmask) of IPv4 "local" routes */
} FastHost;

static PyObject *host_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	FastHost *self;

	(void)args;
	(void)kwds;
	self = (FastHost *)type->tp_alloc(type, 0);
	if (self == NULL)
		return NULL;
	self->entries = PyDict_New();
	self->rx_limit = PyDict_New();
	if (self->entries == NULL || self->rx_limit == NULL) {
		Py_DECREF(self);
		return NULL;
	}
	self->local_ok = 1;
	return (PyObject *)self;
}

static int host_traverse(FastHost *self, visitproc visit, void *arg)
{
	Py_VISIT(self->entries);
	Py_VISIT(self->rx_limit);
	return 0;
}

static int host_clear(FastHost *self)
{
	Py_CLEAR(self->entries);
	Py_CLEAR(self->rx_limit);
	return 0;
}

static void host_dealloc(FastHost *self)
{
	PyObject_GC_UnTrack(self);
	host_clear(self);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

PyDoc_STRVAR(set_local_doc,
	     "set_local(addresses, nets, /)\n\n"
	     "The host's addresses (4- and 16-byte bytes) and IPv4 local nets ((network, netmask)\n"
	     "ints), as LocalAddresses.is_local() sees them.");

static PyObject *host_set_local(FastHost *self, PyObject *const *args, Py_ssize_t nargs)
{
	PyObject *addrs, *nets;
	Py_ssize_t n4 = 0, n6 = 0, nn = 0;

	if (nargs != 2) {
		PyErr_SetString(PyExc_TypeError, "set_local() takes 2 arguments");
		return NULL;
	}
	addrs = PySequence_Fast(args[0], "addresses must be a sequence");
	if (addrs == NULL)
		return NULL;
	nets = PySequence_Fast(args[1], "nets must be a sequence");
	if (nets == NULL) {
		Py_DECREF(addrs);
		return NULL;
	}
	self->local_ok = 0; /* until the whole snapshot is in */
	for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(addrs); i++) {
		PyObject *a = PySequence_Fast_GET_ITEM(addrs, i);
		Py_ssize_t len;

		if (!PyBytes_Check(a))
			goto bad;
		len = PyBytes_GET_SIZE(a);
		if (len == 4 && n4 < LOCAL_MAX)
			memcpy(self->local4[n4++], PyBytes_AS_STRING(a), 4);
		else if (len == 16 && n6 < LOCAL_MAX)
			memcpy(self->local6[n6++], PyBytes_AS_STRING(a), 16);
		else if (len == 4 || len == 16)
			goto full;
		else
			goto bad;
	}
	for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(nets); i++) {
		PyObject *pair = PySequence_Fast_GET_ITEM(nets, i);
		unsigned long net, mask;

		if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2)
			goto bad;
		net = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(pair, 0));
		mask = PyLong_AsUnsignedLong(PyTuple_GET_ITEM(pair, 1));
		if (PyErr_Occurred())
			goto err;
		if (net > 0xFFFFFFFFul || mask > 0xFFFFFFFFul)
			goto bad;
		if (nn == LOCAL_MAX)
			goto full;
		self->nets[nn][0] = (uint32_t)net;
		self->nets[nn][1] = (uint32_t)mask;
		nn++;
	}
	self->n4 = n4;
	self->n6 = n6;
	self->nnets = nn;
	self->local_ok = 1;
full: /* more addresses than the fast path holds: local_ok stays 0 */
	Py_DECREF(addrs);
	Py_DECREF(nets);
	Py_RETURN_NONE;
bad:
	PyErr_SetString(PyExc_ValueError, "set_local(): addresses of 4 or 16 bytes, nets of 2 ints");
err:
	Py_DECREF(addrs);
	Py_DECREF(nets);
	return NULL;
}

static PyObject *host_get_rx_limit(FastHost *self, void *closure)
{
	(void)closure;
	return Py_NewRef(self->rx_limit);
}

static int host_set_rx_limit(FastHost *self, PyObject *value, void *closure)
{
	(void)closure;
	if (value == NULL || !PyDict_CheckExact(value)) {
		PyErr_SetString(PyExc_TypeError, "rx_limit must be a dict");
		return -1;
	}
	Py_XSETREF(self->rx_limit, Py_NewRef(value));
	return 0;
}

static PyMethodDef host_methods[] = {
	{"set_local", (PyCFunction)(void (*)(void))host_set_local, METH_FASTCALL, set_local_doc},
	{NULL, NULL, 0, NULL},
};

static PyGetSetDef host_getset[] = {
	{"rx_limit", (getter)host_get_rx_limit, (setter)host_set_rx_limit,
	 "ifindex -> the longest frame the link takes (Host.rx_limit).", NULL},
	{NULL, NULL, NULL, NULL, NULL},
};

static PyMemberDef host_members[] = {
	{"entries", T_OBJECT, offsetof(FastHost, entries), READONLY,
	 "port -> FastEntry: the ports exactly one fast endpoint is bound to."},
	{"taken", T_PYSSIZET, offsetof(FastHost, taken), READONLY,
	 "Frames the fast path delivered (counted in the host's received)."},
	{NULL, 0, 0, 0, NULL},
};

PyTypeObject rt_fast_host_type = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "rawtransport._datapath.FastHost",
	.tp_basicsize = sizeof(FastHost),
	.tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
	.tp_doc = "FastHost()\n\nThe receive fast path's view of a host.Host.",
	.tp_new = host_new,
	.tp_dealloc = (destructor)host_dealloc,
	.tp_traverse = (traverseproc)host_traverse,
	.tp_clear = (inquiry)host_clear,
	.tp_methods = host_methods,
	.tp_getset = host_getset,
	.tp_members = host_members,
};

/* LocalAddresses.is_local(): one of the host's addresses, or inside an IPv4 local route. */
static int is_local4(const FastHost *h, const uint8_t *a)
{
	uint32_t v = (uint32_t)a[0] << 24 | (uint32_t)a[1] << 16 | (uint32_t)a[2] << 8 | a[3];

	for (Py_ssize_t i = 0; i < h->n4; i++)
		if (memcmp(h->local4[i], a, 4) == 0)
			return 1;
	for (Py_ssize_t i = 0; i < h->nnets; i++)
		if ((v & h->nets[i][1]) == h->nets[i][0])
			return 1;
	return 0;
}

static int is_local6(const FastHost *h, const uint8_t *a)
{
	for (Py_ssize_t i = 0; i < h->n6; i++)
		if (memcmp(h->local6[i], a, 16) == 0)
			return 1;
	return 0;
}

/*
 * UdpEngine._check_addresses() returns None (and Host.lookup() picks this endpoint) for these
 * addresses, on a frame from an Ethernet device. 0 means "not certainly": the Python path
 * decides (and names the drop, or takes the case this one leaves out, such as broadcast).
 */
static int addresses_ok(const FastHost *h, const FastEntry *e, const struct rt_udp *u)
{
	const uint8_t *s = u->src, *d = u->dst;

	if (u->family == 4) {
		static const uint8_t zero[4], lbcast[4] = {255, 255, 255, 255};

		/* ip_route_input_slow(): a zero source (and DHCP's brd_input), multicast and
		 * limited-broadcast sources, 127/8 on a non-loopback device, a zero destination. */
		if (memcmp(s, zero, 4) == 0 || (s[0] >= 224 && s[0] < 240) ||
		    memcmp(s, lbcast, 4) == 0 || s[0] == 127 || d[0] == 127 ||
		    memcmp(d, zero, 4) == 0)
			return 0;
		/* fib_validate_source(): our own address as source from the wire. */
		if (is_local4(h, s))
			return 0;
		/* __udp4_lib_lookup(): the bound address (still one of ours: an address removed
		 * since bind() is not RTN_LOCAL in ip_route_input_slow()), or (wildcard) one of ours. */
		if ((e->local_len && memcmp(d, e->local, 4) != 0) || !is_local4(h, d))
			return 0;
	} else {
		/* ip6_rcv_core(): multicast sources, ::1 from a wire; multicast destinations are
		 * left to the Python path. */
		if (s[0] == 0xFF || d[0] == 0xFF || memcmp(s, v6_loopback, 16) == 0 ||
		    memcmp(d, v6_loopback, 16) == 0)
			return 0;
		if ((e->local_len && memcmp(d, e->local, 16) != 0) || !is_local6(h, d))
			return 0;
	}
	/* A connected socket takes its peer's datagrams only (from any port when connected to
	 * port 0, as compute_score() skips an inet_dport of 0). */
	if (e->remote_len &&
	    (memcmp(s, e->remote, (size_t)u->alen) != 0 ||
	     (e->remote_port && u->sport != e->remote_port)))
		return 0;
	return 1;
}

/*
 * The endpoint this frame certainly goes to, its datagram in *u; NULL (no error set) when the
 * Python path must take it, NULL with an error set when a lookup failed.
 */
/* What the link layer says about a frame (the ring slot's header, or PACKET_AUXDATA). */
struct link_meta {
	int ifindex;
	unsigned pkttype, hatype;
	uint32_t status;
	int truncated;
};

static FastEntry *fast_match(FastHost *h, const struct link_meta *m, const uint8_t *frame,
			     Py_ssize_t snaplen, struct rt_udp *u)
{
	int ifindex = m->ifindex;
	uint32_t status = m->status;
	Py_ssize_t limit = RX_LIMIT_DEFAULT;
	PyObject *key, *v;
	FastEntry *e;

	/* link_drop() and the VLAN, truncation and link-type cases of the engine. */
	if (!h->local_ok || m->pkttype != PACKET_HOST_ || m->hatype != ARPHRD_ETHER_ ||
	    m->truncated || (status & (TP_STATUS_COPY | TP_STATUS_VLAN_VALID)))
		return NULL;
	key = PyLong_FromLong(ifindex);
	if (key == NULL)
		return NULL;
	v = PyDict_GetItemWithError(h->rx_limit, key);
	Py_DECREF(key);
	if (v != NULL) {
		limit = PyLong_AsSsize_t(v);
		if (limit == -1 && PyErr_Occurred())
			return NULL;
	} else if (PyErr_Occurred()) {
		return NULL;
	}
	if (snaplen > limit)
		return NULL;
	/* The engine verifies the UDP checksum unless the kernel vouched for it (CSUM_VOUCHED). */
	if (!rt_parse_fast(frame, snaplen,
			   !(status & (TP_STATUS_CSUMNOTREADY | TP_STATUS_CSUM_VALID)), u))
		return NULL;
	key = PyLong_FromUnsignedLong(u->dport);
	if (key == NULL)
		return NULL;
	e = (FastEntry *)PyDict_GetItemWithError(h->entries, key);
	Py_DECREF(key);
	if (e == NULL || !Py_IS_TYPE(e, &rt_fast_entry_type) || e->protocol == NULL ||
	    e->family != u->family || (e->ifindex && e->ifindex != ifindex) ||
	    !addresses_ok(h, e, u))
		return NULL;
	return e;
}

/* The current exception, normalised, its traceback attached (PyErr_GetRaisedException()). */
static PyObject *take_exception(void)
{
	PyObject *type, *value, *tb;

	PyErr_Fetch(&type, &value, &tb);
	PyErr_NormalizeException(&type, &value, &tb);
	if (tb != NULL && value != NULL)
		PyException_SetTraceback(value, tb);
	Py_XDECREF(type);
	Py_XDECREF(tb);
	return value;
}

static int must_propagate(void)
{
	/* What the transport's dispatch lets through: everything else is reported and the batch
	 * goes on (transport._dispatch()). */
	return PyErr_ExceptionMatches(PyExc_SystemExit) ||
	       PyErr_ExceptionMatches(PyExc_KeyboardInterrupt);
}

static PyObject *str_datagram_received;

/*
 * Deliver one datagram: protocol.datagram_received(payload, addr). An exception goes to the
 * entry's report() and the batch goes on; SystemExit and KeyboardInterrupt stop it (returned in
 * *stop, to be raised once the walker's position is saved).
 */
static void deliver(FastEntry *e, PyObject *payload, PyObject *addr, PyObject **stop)
{
	PyObject *protocol = Py_NewRef(e->protocol);
	PyObject *argv[3] = {protocol, payload, addr};
	PyObject *res, *exc, *r;

	res = PyObject_VectorcallMethod(str_datagram_received, argv,
					3 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
	Py_DECREF(protocol);
	if (res != NULL) {
		Py_DECREF(res);
		return;
	}
	if (must_propagate()) {
		*stop = take_exception();
		return;
	}
	exc = take_exception();
	r = PyObject_CallOneArg(e->report, exc);
	Py_XDECREF(exc);
	if (r != NULL) {
		Py_DECREF(r);
	} else if (must_propagate()) {
		*stop = take_exception();
	} else {
		PyErr_WriteUnraisable(e->report);
	}
}

const char rt_v2_deliver_doc[] =
	"v2_deliver(ring, index, budget, frame_count, frames_per_block, block_size, frame_size,\n"
	"           host, /)\n\n"
	"Walk a TPACKET_V2 ring from slot index as v2_read() does, delivering each frame the fast\n"
	"path can take (see FastHost) straight to its protocol, for up to budget frames. Stops\n"
	"after the first frame it cannot take, which it returns for the Python path. Returns\n"
	"(taken, index, laps, corrupt, slow, exc): slow is None or a v2_read() frame tuple; exc is\n"
	"None or a SystemExit/KeyboardInterrupt from a protocol (or an error of the walk itself)\n"
	"for the caller to raise once it has saved index.";

PyObject *rt_v2_deliver(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	struct v2_walk w;
	Py_ssize_t taken = 0, n = 0;
	PyObject *corrupt, *slow = NULL, *stop = NULL, *result = NULL;
	FastHost *host;

	(void)self;
	if (nargs != 8) {
		PyErr_SetString(PyExc_TypeError, "v2_deliver() takes 8 arguments");
		return NULL;
	}
	if (!Py_IS_TYPE(args[7], &rt_fast_host_type)) {
		PyErr_SetString(PyExc_TypeError, "v2_deliver(): host must be a FastHost");
		return NULL;
	}
	host = (FastHost *)args[7];
	if (rt_v2_open(&w, args, "v2_deliver") < 0)
		return NULL;
	corrupt = PyList_New(0);
	if (corrupt == NULL)
		goto out;
	Py_INCREF(host); /* a protocol may drop the last other reference */
	while (n < w.budget && stop == NULL) {
		const char *bad;
		uint8_t *slot = rt_v2_next(&w, &bad);
		uint32_t snaplen;
		struct link_meta m;
		const uint8_t *frame;
		struct rt_udp u;
		FastEntry *e;
		PyObject *payload, *addr;

		if (slot == NULL)
			break;
		if (bad != NULL) {
			if (rt_v2_count(corrupt, bad) < 0)
				stop = take_exception();
			continue;
		}
		n++;
		snaplen = load_u32(slot + V2_SNAPLEN);
		m.ifindex = (int)load_u32(slot + V2_IFINDEX);
		m.pkttype = slot[V2_PKTTYPE];
		m.hatype = load_u16(slot + V2_HATYPE);
		m.status = rt_v2_status(slot);
		m.truncated = snaplen < load_u32(slot + V2_LEN);
		frame = slot + load_u16(slot + V2_MAC);
		e = fast_match(host, &m, frame, (Py_ssize_t)snaplen, &u);
		if (e == NULL) {
			if (PyErr_Occurred()) {
				release_slot(slot);
				stop = take_exception();
				break;
			}
			/* The Python path's frame, as v2_read() gives it (the slot goes back). */
			slow = rt_v2_item(slot);
			if (slow == NULL)
				stop = take_exception();
			break;
		}
		Py_INCREF(e); /* the protocol may take it out of the table */
		payload = PyBytes_FromStringAndSize((const char *)frame + u.payload, u.plen);
		addr = payload ? peer_addr(e, &u, m.ifindex) : NULL;
		/* Copied out: the slot goes back before the protocol runs (it may take long). */
		release_slot(slot);
		if (addr == NULL) {
			Py_XDECREF(payload);
			Py_DECREF(e);
			stop = take_exception();
			break;
		}
		e->taken++;
		host->taken++;
		taken++;
		deliver(e, payload, addr, &stop);
		Py_DECREF(payload);
		Py_DECREF(addr);
		Py_DECREF(e);
	}
	Py_DECREF(host);
	result = Py_BuildValue("(nnnONN)", taken, w.index, w.laps, corrupt,
			       slow ? slow : Py_NewRef(Py_None), stop ? stop : Py_NewRef(Py_None));
out:
	Py_XDECREF(corrupt);
	PyBuffer_Release(&w.ring);
	return result;
}

const char rt_deliver_frame_doc[] =
	"deliver_frame(frame, ifindex, pkttype, status, hatype, truncated, host, /) -> bool\n\n"
	"One frame a receiver other than the V2 walk read (recvmsg, a V3 block): delivered to its\n"
	"protocol as v2_deliver() would (True), or left to the Python path (False: untouched,\n"
	"uncounted). An exception from the protocol goes to its entry's report(); SystemExit and\n"
	"KeyboardInterrupt propagate.";

PyObject *rt_deliver_frame(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
	struct link_meta m;
	struct rt_udp u;
	Py_buffer view;
	FastHost *host;
	FastEntry *e;
	PyObject *payload, *addr, *stop = NULL;
	long ifindex, pkttype, status, hatype;
	int truncated;

	(void)self;
	if (nargs != 7) {
		PyErr_SetString(PyExc_TypeError, "deliver_frame() takes 7 arguments");
		return NULL;
	}
	if (!Py_IS_TYPE(args[6], &rt_fast_host_type)) {
		PyErr_SetString(PyExc_TypeError, "deliver_frame(): host must be a FastHost");
		return NULL;
	}
	host = (FastHost *)args[6];
	ifindex = PyLong_AsLong(args[1]);
	pkttype = PyLong_AsLong(args[2]);
	status = PyLong_AsLong(args[3]);
	hatype = PyLong_AsLong(args[4]);
	truncated = PyObject_IsTrue(args[5]);
	if (PyErr_Occurred() || truncated < 0)
		return NULL;
	/* Out-of-range metadata is nothing the fast path takes: the Python path names it. */
	if (ifindex < 0 || ifindex > INT32_MAX || pkttype < 0 || pkttype > 255 || status < 0 ||
	    status > (long)UINT32_MAX || hatype < 0 || hatype > 0xFFFF)
		Py_RETURN_FALSE;
	m.ifindex = (int)ifindex;
	m.pkttype = (unsigned)pkttype;
	m.status = (uint32_t)status;
	m.hatype = (unsigned)hatype;
	m.truncated = truncated;
	if (PyObject_GetBuffer(args[0], &view, PyBUF_SIMPLE) < 0)
		return NULL;
	e = fast_match(host, &m, view.buf, view.len, &u);
	if (e == NULL) {
		PyBuffer_Release(&view);
		if (PyErr_Occurred())
			return NULL;
		Py_RETURN_FALSE;
	}
	Py_INCREF(e);
	payload = PyBytes_FromStringAndSize((const char *)view.buf + u.payload, u.plen);
	addr = payload ? peer_addr(e, &u, m.ifindex) : NULL;
	PyBuffer_Release(&view); /* u's pointers are not used past here */
	if (addr == NULL) {
		Py_XDECREF(payload);
		Py_DECREF(e);
		return NULL;
	}
	e->taken++;
	host->taken++;
	deliver(e, payload, addr, &stop);
	Py_DECREF(payload);
	Py_DECREF(addr);
	Py_DECREF(e);
	if (stop != NULL) {
		/* Raised again as it was raised (PyErr_Restore() steals all three references). */
		PyErr_Restore(Py_NewRef((PyObject *)Py_TYPE(stop)), stop,
			      PyException_GetTraceback(stop));
		return NULL;
	}
	Py_RETURN_TRUE;
}

/* Ready the types and add them to the module (PyInit__datapath()). */
int rt_deliver_init(PyObject *module)
{
	str_datagram_received = PyUnicode_InternFromString("datagram_received");
	if (str_datagram_received == NULL || PyType_Ready(&rt_fast_entry_type) < 0 ||
	    PyType_Ready(&rt_fast_host_type) < 0)
		return -1;
	if (PyModule_AddObjectRef(module, "FastEntry", (PyObject *)&rt_fast_entry_type) < 0 ||
	    PyModule_AddObjectRef(module, "FastHost", (PyObject *)&rt_fast_host_type) < 0)
		return -1;
	return 0;
}
