/*
 * rawtransport._datapath, the send fast path: sendto() of a datagram to a destination the Python
 * path has just sent to, in one C call and one send(2) of a frame built from a template.
 *
 * The reference is the Python path: the transport's sendto() -> RawUdpEndpoint.send() (address,
 * route) -> UdpEngine.send_datagram()'s fast branch (a unicast next hop whose MAC is REACHABLE, a
 * datagram within the MTU: build_udp_fast()) -> the stack's write_frames() (send() on the
 * interface's packet socket). When that branch built a frame, the transport installs its headers
 * as the template of the address the caller gave (FastSender.install). Later datagrams to the same
 * address, while the neighbour entry is still REACHABLE (the same "now - confirmed <
 * reachable_time" test) and nothing has changed since (the host clears every template on a route,
 * address, link or neighbour change), are built here: the template's Ethernet, IP and UDP headers,
 * then the payload, with the lengths and checksums patched exactly as build_udp_fast() writes
 * them. tests/test_send.py holds the two to byte-identical frames.
 *
 * Anything else returns False and the Python path takes the datagram from the start: an address
 * without a template, an expired one, a payload too large or empty, a type asyncio refuses, or a
 * send() that failed (EAGAIN and ENOBUFS included: the Python path queues and retries, or reports
 * the error, as it would have). Nothing is sent twice: False means nothing left.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>

#include <errno.h>
#include <stdint.h>
#include <string.h>
#include <poll.h>
#include <sys/socket.h>

#include "_datapath.h"

#define HDR_MAX (ETH_HLEN + IPV6_HLEN + UDP_HLEN)
#define FRAME_MAX (HDR_MAX + 65535)

/* One destination: the headers build_udp_fast() wrote for it, where they go, until when. */
typedef struct {
	PyObject_HEAD
	uint8_t hdr[HDR_MAX];
	Py_ssize_t hlen;	 /* 42 (IPv4) or 62 (IPv6) */
	int fd;			 /* the interface's sending packet socket */
	Py_ssize_t max_payload;	 /* route MTU less the IP and UDP headers */
	double confirmed;	 /* the neighbour entry's confirmation time */
	double reachable_time;	 /* and how long it stays REACHABLE */
} Template;

PyTypeObject rt_template_type = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "rawtransport._datapath.Template",
	.tp_basicsize = sizeof(Template),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "A FastSender's template for one destination (made by FastSender.install).",
};

typedef struct {
	PyObject_HEAD
	PyObject *templates; /* dict: the caller's address (or None when connected) -> Template */
	uint8_t *buf;	     /* FRAME_MAX bytes, reused for every frame */
	Py_ssize_t sent;     /* datagrams sent here (counted in the engine's "sent") */
	PyObject *weakrefs;  /* the host keeps its senders in a WeakSet */
	int watch_fd;	     /* the rtnetlink monitor, or -1 */
	double interval;     /* how often to look at it */
	double checked;	     /* when it was last seen quiet */
} FastSender;

static PyObject *sender_new(PyTypeObject *type, PyObject *args, PyObject *kwds)
{
	FastSender *self;

	(void)args;
	(void)kwds;
	self = (FastSender *)type->tp_alloc(type, 0);
	if (self == NULL)
		return NULL;
	self->watch_fd = -1;
	self->templates = PyDict_New();
	self->buf = PyMem_Malloc(FRAME_MAX);
	if (self->templates == NULL || self->buf == NULL) {
		Py_DECREF(self);
		return PyErr_NoMemory();
	}
	return (PyObject *)self;
}

static void sender_dealloc(FastSender *self)
{
	if (self->weakrefs != NULL)
		PyObject_ClearWeakRefs((PyObject *)self);
	Py_XDECREF(self->templates);
	PyMem_Free(self->buf);
	Py_TYPE(self)->tp_free((PyObject *)self);
}

/*
 * Addresses a template may be kept under: None (a connected transport's sendto(data)), or a
 * (str, int) / (str, int, int, int) tuple of exactly those types. A key that only compares equal
 * (a float port, a str subclass) would reach the template without the Python path's checks.
 */
static int plain_key(PyObject *addr)
{
	Py_ssize_t n;

	if (addr == Py_None)
		return 1;
	if (!PyTuple_CheckExact(addr))
		return 0;
	n = PyTuple_GET_SIZE(addr);
	if ((n != 2 && n != 4) || !PyUnicode_CheckExact(PyTuple_GET_ITEM(addr, 0)))
		return 0;
	for (Py_ssize_t i = 1; i < n; i++)
		if (!PyLong_CheckExact(PyTuple_GET_ITEM(addr, i)))
			return 0;
	return 1;
}

PyDoc_STRVAR(install_doc,
	     "install(addr, frame, fd, max_payload, confirmed, reachable_time, /)\n\n"
	     "Keep the headers of frame (as build_udp_fast() built it, untagged IPv4 or IPv6) as the\n"
	     "template of addr. Returns False (nothing kept) for an address of another shape.");

static PyObject *sender_install(FastSender *self, PyObject *const *args, Py_ssize_t nargs)
{
	Py_buffer frame;
	Template *t;
	Py_ssize_t hlen;
	long fd;
	int rc;

	if (nargs != 6) {
		PyErr_SetString(PyExc_TypeError, "install() takes 6 arguments");
		return NULL;
	}
	if (!plain_key(args[0]))
		Py_RETURN_FALSE;
	if (PyObject_GetBuffer(args[1], &frame, PyBUF_SIMPLE) < 0)
		return NULL;
	hlen = 0;
	if (frame.len >= ETH_HLEN + IPV4_HLEN + UDP_HLEN &&
	    memcmp((uint8_t *)frame.buf + 12, "\x08\x00\x45", 3) == 0)
		hlen = ETH_HLEN + IPV4_HLEN + UDP_HLEN;
	else if (frame.len >= HDR_MAX && memcmp((uint8_t *)frame.buf + 12, "\x86\xdd", 2) == 0)
		hlen = HDR_MAX;
	if (hlen == 0) {
		PyBuffer_Release(&frame);
		PyErr_SetString(PyExc_ValueError, "install(): not an untagged IPv4/IPv6 UDP frame");
		return NULL;
	}
	t = PyObject_New(Template, &rt_template_type);
	if (t == NULL) {
		PyBuffer_Release(&frame);
		return NULL;
	}
	memcpy(t->hdr, frame.buf, (size_t)hlen);
	PyBuffer_Release(&frame);
	t->hlen = hlen;
	fd = PyLong_AsLong(args[2]);
	t->fd = fd >= 0 && fd <= INT32_MAX ? (int)fd : -1;
	t->max_payload = PyLong_AsSsize_t(args[3]);
	t->confirmed = PyFloat_AsDouble(args[4]);
	t->reachable_time = PyFloat_AsDouble(args[5]);
	if (PyErr_Occurred() || t->fd < 0 || t->max_payload < 0 ||
	    t->max_payload > 65535 - (hlen - ETH_HLEN)) {
		Py_DECREF(t);
		if (!PyErr_Occurred())
			PyErr_SetString(PyExc_ValueError, "install(): fd or max_payload out of range");
		return NULL;
	}
	rc = PyDict_SetItem(self->templates, args[0], (PyObject *)t);
	Py_DECREF(t);
	if (rc < 0)
		return NULL;
	Py_RETURN_TRUE;
}

PyDoc_STRVAR(watch_doc,
	     "watch(fd, interval, /)\n\n"
	     "Before a send, at most once per interval seconds, look whether fd (the stack's\n"
	     "rtnetlink monitor) has news; if so the Python path takes the datagram, applies the\n"
	     "change (clearing every template) and answers as the kernel would now (the check\n"
	     "RawStack.route() makes).");

static PyObject *sender_watch(FastSender *self, PyObject *const *args, Py_ssize_t nargs)
{
	long fd;
	double interval;

	if (nargs != 2) {
		PyErr_SetString(PyExc_TypeError, "watch() takes 2 arguments");
		return NULL;
	}
	fd = PyLong_AsLong(args[0]);
	interval = PyFloat_AsDouble(args[1]);
	if (PyErr_Occurred())
		return NULL;
	if (fd < -1 || fd > INT32_MAX || !(interval >= 0.0)) {
		PyErr_SetString(PyExc_ValueError, "watch(): fd or interval out of range");
		return NULL;
	}
	self->watch_fd = (int)fd;
	self->interval = interval;
	self->checked = -1e300;
	Py_RETURN_NONE;
}

static PyObject *sender_clear(FastSender *self, PyObject *unused)
{
	(void)unused;
	PyDict_Clear(self->templates);
	Py_RETURN_NONE;
}

/*
 * The frame for payload p (n bytes) from template t, in buf: what build_udp_fast() writes for
 * the same arguments. Returns its length.
 */
static Py_ssize_t build(const Template *t, uint8_t *buf, const void *p, Py_ssize_t n)
{
	memcpy(buf, t->hdr, (size_t)t->hlen);
	if (t->hlen == ETH_HLEN + IPV4_HLEN + UDP_HLEN) {
		unsigned tot = (unsigned)(n + UDP_HLEN + IPV4_HLEN);

		buf[16] = (uint8_t)(tot >> 8);
		buf[17] = (uint8_t)tot;
		buf[24] = buf[25] = 0;
		tot = ~rt_inet_sum(buf + ETH_HLEN, IPV4_HLEN) & 0xFFFF;
		buf[24] = (uint8_t)(tot >> 8);
		buf[25] = (uint8_t)tot;
		rt_put_udp(buf, ETH_HLEN + IPV4_HLEN, 4, be16(buf + 34), be16(buf + 36), p, n);
	} else {
		unsigned ulen = (unsigned)(n + UDP_HLEN);

		buf[18] = (uint8_t)(ulen >> 8);
		buf[19] = (uint8_t)ulen;
		rt_put_udp(buf, ETH_HLEN + IPV6_HLEN, 16, be16(buf + 54), be16(buf + 56), p, n);
	}
	return t->hlen + n;
}

PyDoc_STRVAR(sendto_doc,
	     "sendto(data, addr, now, /) -> bool\n\n"
	     "Send data to addr from its template (see the module comment); False when the Python\n"
	     "path must take it (nothing was sent).");

static PyObject *sender_sendto(FastSender *self, PyObject *const *args, Py_ssize_t nargs)
{
	PyObject *data, *addr;
	Template *t;
	Py_buffer view;
	Py_ssize_t len;
	double now;
	ssize_t rc;

	if (nargs != 3) {
		PyErr_SetString(PyExc_TypeError, "sendto() takes 3 arguments");
		return NULL;
	}
	data = args[0];
	addr = args[1];
	/* transport.sendto() takes these three types only (as _SelectorDatagramTransport). */
	if (!PyBytes_CheckExact(data) && !PyByteArray_CheckExact(data) && !PyMemoryView_Check(data))
		Py_RETURN_FALSE;
	if (!plain_key(addr))
		Py_RETURN_FALSE;
	now = PyFloat_AsDouble(args[2]);
	if (now == -1.0 && PyErr_Occurred())
		return NULL;
	t = (Template *)PyDict_GetItemWithError(self->templates, addr);
	if (t == NULL) {
		if (PyErr_Occurred())
			return NULL;
		Py_RETURN_FALSE;
	}
	/* NeighbourCache.reachable(), the same comparison. */
	if (!(now - t->confirmed < t->reachable_time))
		Py_RETURN_FALSE;
	if (self->watch_fd >= 0 && now - self->checked >= self->interval) {
		struct pollfd p = {.fd = self->watch_fd, .events = POLLIN};

		if (poll(&p, 1, 0) != 0)
			Py_RETURN_FALSE; /* a route, address or link change waits (or poll failed) */
		self->checked = now;
	}
	if (PyObject_GetBuffer(data, &view, PyBUF_SIMPLE) < 0) {
		PyErr_Clear(); /* a strided view: the Python path copies it first */
		Py_RETURN_FALSE;
	}
	if (view.len == 0 || view.len > t->max_payload) {
		PyBuffer_Release(&view);
		Py_RETURN_FALSE;
	}
	len = build(t, self->buf, view.buf, view.len);
	PyBuffer_Release(&view);
	rc = send(t->fd, self->buf, (size_t)len, MSG_DONTWAIT);
	if (rc != len)
		Py_RETURN_FALSE; /* the Python path sends it, or queues it, or reports the error */
	self->sent++;
	Py_RETURN_TRUE;
}

static PyMethodDef sender_methods[] = {
	{"install", (PyCFunction)(void (*)(void))sender_install, METH_FASTCALL, install_doc},
	{"clear", (PyCFunction)sender_clear, METH_NOARGS, "Forget every template."},
	{"watch", (PyCFunction)(void (*)(void))sender_watch, METH_FASTCALL, watch_doc},
	{"sendto", (PyCFunction)(void (*)(void))sender_sendto, METH_FASTCALL, sendto_doc},
	{NULL, NULL, 0, NULL},
};

static PyMemberDef sender_members[] = {
	{"sent", T_PYSSIZET, offsetof(FastSender, sent), READONLY,
	 "Datagrams sent by the fast path (counted in the engine's sent)."},
	{"templates", T_OBJECT, offsetof(FastSender, templates), READONLY,
	 "address -> Template."},
	{NULL, 0, 0, 0, NULL},
};

PyTypeObject rt_fast_sender_type = {
	PyVarObject_HEAD_INIT(NULL, 0)
	.tp_name = "rawtransport._datapath.FastSender",
	.tp_basicsize = sizeof(FastSender),
	.tp_weaklistoffset = offsetof(FastSender, weakrefs),
	.tp_flags = Py_TPFLAGS_DEFAULT,
	.tp_doc = "FastSender()\n\nOne endpoint's send templates (see rawtransport/_send.c).",
	.tp_new = sender_new,
	.tp_dealloc = (destructor)sender_dealloc,
	.tp_methods = sender_methods,
	.tp_members = sender_members,
};

/* Ready the types and add FastSender to the module (PyInit__datapath()). */
int rt_send_init(PyObject *module)
{
	if (PyType_Ready(&rt_template_type) < 0 || PyType_Ready(&rt_fast_sender_type) < 0)
		return -1;
	return PyModule_AddObjectRef(module, "FastSender", (PyObject *)&rt_fast_sender_type);
}
