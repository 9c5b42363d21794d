/*
 * The REST server: an HTTP/1.1 server of our own on non-blocking sockets and
 * one epoll thread (with OpenSSL for https), a route table, a worker pool for
 * handlers, JSON error bodies and request limits. Not an HTTP client, and
 * not HTTP/2: one request at a time per connection.
 */
#include "http.h"

#include <ctype.h>
#include <errno.h>
#include <netdb.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>
#include <unistd.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <sodium.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include "err.h"
#include "log.h"

#define HTTP_DEFAULT_WORKERS 8u
#define HTTP_DEFAULT_QUEUE 256u
#define HTTP_DEFAULT_MAX_BODY ((size_t)1 << 20)
#define HTTP_DEFAULT_BODY_TIMEOUT_MS 10000u
#define HTTP_DEFAULT_HEADER_TIMEOUT_MS 10000u
#define HTTP_DEFAULT_IDLE_TIMEOUT_MS 60000u
#define HTTP_DEFAULT_WRITE_TIMEOUT_MS 10000u
#define HTTP_DEFAULT_MAX_CONNECTIONS 1024u
#define HTTP_DEFAULT_MAX_HEADER_BYTES ((size_t)8 << 10)
#define HTTP_DEFAULT_MAX_HEADERS 100u
#define HTTP_MIN_HEADER_BYTES ((size_t)256)
#define HTTP_MAX_SEGMENTS 32
#define HTTP_MAX_PARAMS 8
#define HTTP_MAX_QUERY 64
#define HTTP_MAX_PEM ((size_t)1 << 20)
#define HTTP_BODY_CHUNK ((size_t)16 << 10)
#define HTTP_IN_MIN ((size_t)4 << 10)
/* After an answer that closes the connection, unread input is drained for
 * this long (at most HTTP_LINGER_BYTES), so the close does not turn into a
 * reset that destroys the answer before the client has read it. */
#define HTTP_LINGER_MS 1000u
#define HTTP_LINGER_BYTES ((size_t)1 << 20)
#define HTTP_ACCEPT_BATCH 64
/* Steps (a read, a parsed request, a write) one connection may take per
 * loop turn before the others get theirs: a client pipelining requests
 * that are answered at once must not hold the I/O thread. */
#define HTTP_TURN_STEPS 64u
/* What a refused connection (max_connections) has sent is read before the
 * close, but no more than this. */
#define HTTP_REFUSE_DRAIN ((size_t)64 << 10)
#define HTTP_UNMATCHED "unmatched"

/* One segment of a route pattern: a literal, or a parameter with an
 * optional literal suffix ("{name}:drain" has param "name", lit ":drain"). */
struct route_seg {
	char *lit;
	char *param;
};

struct route {
	char *method;
	char *pattern;
	char *shape; /* pattern with parameter names removed: "/v1/jobs/{}" */
	struct route_seg *segs;
	size_t nsegs;
	size_t nliteral; /* literal characters: the more, the more specific */
	mer_http_handler_fn fn;
	void *arg;
	unsigned flags;
};

struct kv {
	char *name;
	char *value;
};

/* A request header, pointing into the job's copy of the header block. */
struct hdr {
	const char *name;
	const char *value;
};

struct mer_http_req {
	struct http_job *job;
	const char *method; /* into job->head */
	const char *path;   /* into job->head */
	const struct route *route;
	const char *route_label; /* best pattern of a 405, for observe */
	struct kv params[HTTP_MAX_PARAMS];
	size_t nparams;
	struct kv *query;
	size_t nquery;
	struct hdr *hdrs;
	size_t nhdrs;
	char *body;
	size_t body_len;
	struct mer_json_doc doc;
	bool has_doc;
};

struct mer_http_res {
	int status;
	char *ctype;
	char *body;
	size_t len;
	struct kv *hdrs;
	size_t nhdrs;
	bool is_error;
	bool oom; /* a setter ran out of memory: answer 500 */
};

/* A growable byte buffer; off is how much of it has been consumed. */
struct buf {
	char *p;
	size_t len;
	size_t off;
	size_t cap;
};

/*
 * One request, from its parsed header block to its serialized answer. The
 * I/O thread owns it except while it is queued for or run by a worker;
 * conn is read and written by the I/O thread only (NULL once the
 * connection is gone), cancelled under srv->mu (the worker skips the
 * handler of a request whose client has gone).
 */
struct http_job {
	struct mer_http_server *srv;
	struct conn *conn;
	struct http_job *next;
	bool cancelled;
	bool in_queue;	  /* on srv->qhead (under srv->mu) */
	bool close;	  /* answer with Connection: close, then close */
	bool keepalive10; /* an HTTP/1.0 client asked for keep-alive */
	bool is_head;	  /* no body in the answer */
	bool early;	  /* res holds an answer to send after the body */
	bool expect;	  /* Expect: 100-continue */
	int status;	  /* of the serialized answer */
	const char *label;
	struct timespec t0;
	char *head; /* request line and headers, parsed in place */
	size_t body_want;
	size_t body_cap;
	struct buf out; /* the serialized answer */
	struct mer_http_req req;
	struct mer_http_res res;
};

enum conn_state {
	C_TLS,	  /* TLS handshake */
	C_IDLE,	  /* keep-alive, no byte of the next request yet */
	C_HEAD,	  /* reading a request line and headers */
	C_BODY,	  /* reading a body */
	C_WORK,	  /* the request is with a worker */
	C_FLUSH,  /* writing an answer; then the next request or C_LINGER */
	C_LINGER, /* answer written, write side shut: draining input */
};

/* What an epoll event points at. */
enum ev_kind { EV_LISTEN, EV_WAKE, EV_CONN };

struct conn {
	enum ev_kind kind; /* EV_CONN; first, see struct ev_tag */
	struct mer_http_server *srv;
	int fd;
	SSL *ssl;
	enum conn_state state;
	bool closed;
	bool ready;	    /* on srv->ready: more to do next loop turn */
	bool close_after;   /* the answer being written ends the connection */
	bool fresh;	    /* no request has completed on it yet */
	uint64_t deadline;  /* of the state, ms on mono_ms(); 0 none */
	uint64_t wdeadline; /* for pending output; 0 none */
	size_t scan;	    /* where the search for the header end resumes */
	size_t lingered;    /* bytes drained in C_LINGER */
	struct buf in;
	struct buf out;
	struct http_job *job; /* in C_BODY, C_WORK */
	struct conn *prev;
	struct conn *next;
	struct conn *rnext; /* on srv->ready */
};

struct ev_tag {
	enum ev_kind kind;
};

enum srv_state { S_NEW, S_STARTED, S_STOPPING, S_STOPPED };

struct mer_http_server {
	char *url;
	char *host; /* to bind; NULL: any */
	char *port_str;
	unsigned nworkers;
	unsigned max_queue;
	size_t max_body;
	size_t max_depth;
	unsigned body_timeout_ms;
	unsigned header_timeout_ms;
	unsigned idle_timeout_ms;
	unsigned write_timeout_ms;
	unsigned max_conns;
	size_t max_header_bytes;
	unsigned max_headers;
	void *arg;
	mer_http_observe_fn observe;
	void *observe_arg;

	struct route *routes;
	size_t nroutes;

	SSL_CTX *tls;
	int lfd;
	int efd;
	int epfd;
	int port;
	struct ev_tag listen_tag;
	struct ev_tag wake_tag;

	/* I/O thread only. */
	struct conn *conns;
	struct conn *zombies; /* closed during this loop turn; freed after */
	struct conn *ready;   /* ran out of steps; run again next turn */
	uint64_t next_sweep;
	uint64_t accept_resume; /* out of descriptors: accept again then */
	uint64_t now;

	pthread_mutex_t mu;
	pthread_cond_t work_cv; /* a job was queued, or quit */
	enum srv_state state;
	bool quit;    /* workers */
	bool io_quit; /* I/O thread */
	unsigned queued;
	unsigned busy;
	unsigned nconns;
	struct http_job *qhead;
	struct http_job *qtail;
	struct http_job *done; /* answered by workers, for the I/O thread */
	pthread_t io_thread;
	bool io_started;
	pthread_t *threads;
	unsigned nthreads;
};

static const char continue_line[] = "HTTP/1.1 100 Continue\r\n\r\n";

/* ---- small helpers ---------------------------------------------------- */

static uint64_t mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

static double elapsed_s(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t0->tv_sec) +
	       (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
}

static char *dup_n(const char *s, size_t n)
{
	char *p = malloc(n + 1);

	if (!p)
		return NULL;
	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

static char *dup_s(const char *s)
{
	return s ? dup_n(s, strlen(s)) : NULL;
}

static int hexval(int c)
{
	if (c >= '0' && c <= '9')
		return c - '0';
	if (c >= 'a' && c <= 'f')
		return c - 'a' + 10;
	if (c >= 'A' && c <= 'F')
		return c - 'A' + 10;
	return -1;
}

/*
 * Percent-decodes n bytes of s into a new string. plus_space turns '+'
 * into ' ' (query strings). Refuses malformed escapes and NUL bytes, which
 * would silently truncate a C string (MER_EINVAL).
 */
static int pct_decode(const char *s, size_t n, bool plus_space, char **out)
{
	char *d = malloc(n + 1);
	size_t j = 0;

	*out = NULL;
	if (!d)
		return MER_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		int c = (unsigned char)s[i];

		if (c == '%') {
			int hi, lo;

			if (i + 2 >= n) {
				free(d);
				return MER_EINVAL;
			}
			hi = hexval((unsigned char)s[i + 1]);
			lo = hexval((unsigned char)s[i + 2]);
			if (hi < 0 || lo < 0) {
				free(d);
				return MER_EINVAL;
			}
			c = hi * 16 + lo;
			i += 2;
		} else if (c == '+' && plus_space) {
			c = ' ';
		}
		if (c == 0) {
			free(d);
			return MER_EINVAL;
		}
		d[j++] = (char)c;
	}
	d[j] = '\0';
	*out = d;
	return 0;
}

/* Copies msg into a JSON string, replacing bytes that are not valid UTF-8
 * so a message quoting client input can always be encoded. */
static json_t *json_text(const char *msg)
{
	json_t *s = json_string(msg);
	char *copy;

	if (s)
		return s;
	copy = dup_s(msg);
	if (!copy)
		return NULL;
	for (char *p = copy; *p; p++)
		if ((unsigned char)*p >= 0x80 || (unsigned char)*p < 0x20)
			*p = '?';
	s = json_string(copy);
	free(copy);
	return s;
}

static const char *method_label(const char *m)
{
	static const char *const known[] = {"GET",   "HEAD",   "POST",	 "PUT",
					    "PATCH", "DELETE", "OPTIONS"};

	for (size_t i = 0; i < sizeof(known) / sizeof(known[0]); i++)
		if (m && strcmp(m, known[i]) == 0)
			return known[i];
	return "OTHER";
}
int mer_http_status_for_err(int err)
{
	switch ((enum mer_err)err) {
	case MER_OK:
		return 200;
	case MER_EINVAL:
	case MER_EPARSE:
	case MER_EPROTO:
		return 400;
	case MER_EAUTH:
	case MER_ECRYPTO:
	case MER_EEXPIRED:
		return 401;
	case MER_EPERM:
	case MER_EREVOKED:
		return 403;
	case MER_ENOTFOUND:
		return 404;
	case MER_EEXIST:
	case MER_ECOMPARE:
	case MER_ESTATE:
	case MER_EUSED:
	case MER_EREPLAY:
	case MER_ECANCELED:
		return 409;
	case MER_ETOOBIG:
		return 413;
	case MER_EUNSUPPORTED:
		return 501;
	case MER_EREMOTE:
		return 502;
	case MER_EUNREACHABLE:
	case MER_EBUSY:
	case MER_ECLOSED:
	case MER_ENOTLEADER:
		return 503;
	case MER_ETIMEDOUT:
		return 504;
	case MER_ENOMEM:
	case MER_EIO:
		return 500;
	}
	return 500;
}

/* ---- responses -------------------------------------------------------- */

static void res_clear_body(struct mer_http_res *res)
{
	free(res->body);
	free(res->ctype);
	res->body = NULL;
	res->ctype = NULL;
	res->len = 0;
}

static void res_reset(struct mer_http_res *res)
{
	res_clear_body(res);
	for (size_t i = 0; i < res->nhdrs; i++) {
		free(res->hdrs[i].name);
		free(res->hdrs[i].value);
	}
	free(res->hdrs);
	memset(res, 0, sizeof(*res));
}

static int res_set_body(struct mer_http_res *res, int status, const char *ctype,
			char *body, size_t len)
{
	char *ct = dup_s(ctype);

	if (!ct) {
		free(body);
		res->oom = true;
		return MER_ENOMEM;
	}
	res_clear_body(res);
	res->status = status;
	res->ctype = ct;
	res->body = body;
	res->len = len;
	res->is_error = false;
	return 0;
}

int mer_http_res_json(struct mer_http_res *res, int status, json_t *body)
{
	char *text;

	if (!body) {
		res->oom = true;
		return MER_ENOMEM;
	}
	text = json_dumps(body, JSON_COMPACT | JSON_ENCODE_ANY);
	if (!text) {
		res->oom = true;
		return MER_ENOMEM;
	}
	return res_set_body(res, status, "application/json", text,
			    strlen(text));
}

int mer_http_res_json_new(struct mer_http_res *res, int status, json_t *body)
{
	int rv = mer_http_res_json(res, status, body);

	json_decref(body);
	return rv;
}

static bool header_text_ok(const char *s, bool is_name);

int mer_http_res_text(struct mer_http_res *res, int status,
		      const char *content_type, const char *data, size_t len)
{
	char *copy;

	/* The content type is written as a header: CR/LF in it would let
	 * whoever chose it add headers of their own. */
	if (content_type && !header_text_ok(content_type, false))
		return MER_EINVAL;
	copy = dup_n(data ? data : "", data ? len : 0);
	if (!copy) {
		res->oom = true;
		return MER_ENOMEM;
	}
	return res_set_body(res, status,
			    content_type ? content_type
					 : "text/plain; charset=utf-8",
			    copy, data ? len : 0);
}

void mer_http_res_status(struct mer_http_res *res, int status)
{
	res_clear_body(res);
	res->status = status;
	res->is_error = false;
}

static bool header_text_ok(const char *s, bool is_name)
{
	if (!s || (is_name && !*s))
		return false;
	for (; *s; s++) {
		unsigned char c = (unsigned char)*s;

		/* CR/LF would let a value inject headers of its own. */
		if (c == '\r' || c == '\n' || c == 0x7f ||
		    (c < 0x20 && c != '\t'))
			return false;
		if (is_name && (c == ':' || c == ' ' || c == '\t'))
			return false;
	}
	return true;
}

int mer_http_res_header(struct mer_http_res *res, const char *name,
			const char *value)
{
	struct kv *h;

	if (!header_text_ok(name, true) || !header_text_ok(value, false) ||
	    strcasecmp(name, "Content-Type") == 0 ||
	    strcasecmp(name, "Content-Length") == 0 ||
	    strcasecmp(name, "Connection") == 0 ||
	    strcasecmp(name, "Transfer-Encoding") == 0)
		return MER_EINVAL;
	h = realloc(res->hdrs, (res->nhdrs + 1) * sizeof(*h));
	if (!h) {
		res->oom = true;
		return MER_ENOMEM;
	}
	res->hdrs = h;
	h[res->nhdrs].name = dup_s(name);
	h[res->nhdrs].value = dup_s(value);
	if (!h[res->nhdrs].name || !h[res->nhdrs].value) {
		free(h[res->nhdrs].name);
		free(h[res->nhdrs].value);
		res->oom = true;
		return MER_ENOMEM;
	}
	res->nhdrs++;
	return 0;
}

static int res_error_msg(struct mer_http_res *res, int status, const char *code,
			 const char *field, const char *msg)
{
	json_t *o = json_object();
	int rv;

	if (!o || json_object_set_new(o, "error", json_text(code)) != 0 ||
	    json_object_set_new(o, "message", json_text(msg)) != 0 ||
	    (field && json_object_set_new(o, "field", json_text(field)) != 0)) {
		json_decref(o);
		res->oom = true;
		return MER_ENOMEM;
	}
	rv = mer_http_res_json_new(res, status, o);
	if (rv == 0)
		res->is_error = true;
	return rv;
}

static int res_verror(struct mer_http_res *res, int status, const char *code,
		      const char *field, const char *fmt, va_list ap)
{
	char msg[1024];

	vsnprintf(msg, sizeof(msg), fmt, ap);
	return res_error_msg(res, status, code, field, msg);
}

int mer_http_res_error(struct mer_http_res *res, int status, const char *code,
		       const char *field, const char *fmt, ...)
{
	va_list ap;
	int rv;

	va_start(ap, fmt);
	rv = res_verror(res, status, code, field, fmt, ap);
	va_end(ap);
	return rv;
}

int mer_http_res_fail(struct mer_http_res *res, int err, const char *field,
		      const char *fmt, ...)
{
	va_list ap;

	va_start(ap, fmt);
	res_verror(res, mer_http_status_for_err(err), mer_errname(err), field,
		   fmt, ap);
	va_end(ap);
	return err;
}

static void res_errorf(struct mer_http_res *res, int status, const char *code,
		       const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

static void res_errorf(struct mer_http_res *res, int status, const char *code,
		       const char *fmt, ...)
{
	va_list ap;

	res_reset(res);
	va_start(ap, fmt);
	res_verror(res, status, code, NULL, fmt, ap);
	va_end(ap);
}

/* ---- requests --------------------------------------------------------- */

const char *mer_http_req_method(const struct mer_http_req *req)
{
	return req->method;
}

const char *mer_http_req_path(const struct mer_http_req *req)
{
	return req->path;
}

const char *mer_http_req_route(const struct mer_http_req *req)
{
	if (req->route)
		return req->route->pattern;
	return req->route_label ? req->route_label : HTTP_UNMATCHED;
}

const char *mer_http_req_param(const struct mer_http_req *req, const char *name)
{
	for (size_t i = 0; i < req->nparams; i++)
		if (strcmp(req->params[i].name, name) == 0)
			return req->params[i].value;
	return NULL;
}

const char *mer_http_req_query(const struct mer_http_req *req, const char *name)
{
	for (size_t i = 0; i < req->nquery; i++)
		if (strcmp(req->query[i].name, name) == 0)
			return req->query[i].value;
	return NULL;
}

size_t mer_http_req_query_count(const struct mer_http_req *req)
{
	return req->nquery;
}

int mer_http_req_query_at(const struct mer_http_req *req, size_t i,
			  const char **name, const char **value)
{
	if (i >= req->nquery)
		return MER_ENOTFOUND;
	if (name)
		*name = req->query[i].name;
	if (value)
		*value = req->query[i].value;
	return 0;
}

const char *mer_http_req_body(const struct mer_http_req *req, size_t *len)
{
	if (len)
		*len = req->body_len;
	return req->body_len ? req->body : NULL;
}

json_t *mer_http_req_json(const struct mer_http_req *req)
{
	return req->has_doc ? req->doc.root : NULL;
}

const struct mer_json_doc *mer_http_req_doc(const struct mer_http_req *req)
{
	return req->has_doc ? &req->doc : NULL;
}

void *mer_http_req_server_arg(const struct mer_http_req *req)
{
	return req->job->srv->arg;
}

/* The headers were parsed with the request and live in the job, which the
 * handler's worker owns while it runs: no lock, no copy. */
const char *mer_http_req_header(struct mer_http_req *req, const char *name)
{
	if (!name)
		return NULL;
	for (size_t i = 0; i < req->nhdrs; i++)
		if (strcasecmp(req->hdrs[i].name, name) == 0)
			return req->hdrs[i].value;
	return NULL;
}

static void req_free(struct mer_http_req *req)
{
	for (size_t i = 0; i < req->nparams; i++) {
		free(req->params[i].name);
		free(req->params[i].value);
	}
	for (size_t i = 0; i < req->nquery; i++) {
		free(req->query[i].name);
		free(req->query[i].value);
	}
	free(req->query);
	free(req->hdrs);
	free(req->body);
	if (req->has_doc)
		mer_json_doc_free(&req->doc);
}

/* Splits "a=1&b=x%20y&flag" into decoded pairs. */
static int parse_query(struct mer_http_req *req, const char *q)
{
	const char *p = q;

	while (*p) {
		const char *end = strchr(p, '&');
		const char *eq;
		size_t n = end ? (size_t)(end - p) : strlen(p);
		struct kv *kv;
		int rv;

		if (n == 0) {
			p++;
			continue;
		}
		if (req->nquery == HTTP_MAX_QUERY)
			return MER_ETOOBIG;
		kv = realloc(req->query, (req->nquery + 1) * sizeof(*kv));
		if (!kv)
			return MER_ENOMEM;
		req->query = kv;
		kv = &req->query[req->nquery];
		eq = memchr(p, '=', n);
		rv = pct_decode(p, eq ? (size_t)(eq - p) : n, true, &kv->name);
		if (rv)
			return rv;
		if (eq)
			rv = pct_decode(eq + 1, n - (size_t)(eq - p) - 1, true,
					&kv->value);
		else
			kv->value = dup_s("");
		if (rv || !kv->value) {
			free(kv->name);
			return rv ? rv : MER_ENOMEM;
		}
		req->nquery++;
		p += n;
	}
	return 0;
}

/* ---- routes ----------------------------------------------------------- */

static void route_free(struct route *r)
{
	for (size_t i = 0; i < r->nsegs; i++) {
		free(r->segs[i].lit);
		free(r->segs[i].param);
	}
	free(r->segs);
	free(r->method);
	free(r->pattern);
	free(r->shape);
}

static bool name_char(int c)
{
	return isalnum(c) || c == '_' || c == '-';
}

/* Parses pattern into r->segs; MER_EINVAL for a malformed one. */
static int route_compile(struct route *r, const char *pattern)
{
	const char *p = pattern;
	size_t shape_len = 0;
	char *shape;

	if (p[0] != '/')
		return MER_EINVAL;
	shape = malloc(strlen(pattern) + 1);
	if (!shape)
		return MER_ENOMEM;
	r->shape = shape;
	r->segs = calloc(HTTP_MAX_SEGMENTS, sizeof(*r->segs));
	if (!r->segs)
		return MER_ENOMEM;
	if (strcmp(p, "/") == 0) {
		memcpy(shape, "/", 2);
		return 0;
	}
	while (*p == '/') {
		const char *seg = p + 1;
		const char *end = strchr(seg, '/');
		size_t n = end ? (size_t)(end - seg) : strlen(seg);
		struct route_seg *s;

		if (n == 0 || r->nsegs == HTTP_MAX_SEGMENTS)
			return MER_EINVAL;
		s = &r->segs[r->nsegs++];
		shape[shape_len++] = '/';
		if (seg[0] == '{') {
			const char *close = memchr(seg, '}', n);
			size_t nlen;

			if (!close || close == seg + 1)
				return MER_EINVAL;
			nlen = (size_t)(close - seg - 1);
			for (size_t i = 0; i < nlen; i++)
				if (!name_char((unsigned char)seg[1 + i]))
					return MER_EINVAL;
			s->param = dup_n(seg + 1, nlen);
			s->lit = dup_n(close + 1, n - nlen - 2);
			if (!s->param || !s->lit)
				return MER_ENOMEM;
			if (s->lit[0] && s->lit[0] != ':')
				return MER_EINVAL;
			if (strchr(s->lit, '{') || strchr(s->lit, '}'))
				return MER_EINVAL;
			memcpy(shape + shape_len, "{}", 2);
			shape_len += 2;
		} else {
			if (memchr(seg, '{', n) || memchr(seg, '}', n))
				return MER_EINVAL;
			s->lit = dup_n(seg, n);
			if (!s->lit)
				return MER_ENOMEM;
		}
		memcpy(shape + shape_len, s->lit, strlen(s->lit));
		shape_len += strlen(s->lit);
		r->nliteral += strlen(s->lit) + 1;
		p = seg + n;
	}
	shape[shape_len] = '\0';
	return *p ? MER_EINVAL : 0;
}

static bool method_ok(const char *m)
{
	if (!m || !*m || strlen(m) > 16)
		return false;
	for (; *m; m++)
		if (!isupper((unsigned char)*m))
			return false;
	return true;
}

int mer_http_server_add_route(struct mer_http_server *srv,
			      const struct mer_http_route *route)
{
	struct route r, *grown;
	int rv;

	if (!srv || !route || !route->pattern || !route->handler ||
	    !method_ok(route->method) || strcmp(route->method, "HEAD") == 0)
		return MER_EINVAL;
	pthread_mutex_lock(&srv->mu);
	rv = srv->state == S_NEW ? 0 : MER_ESTATE;
	pthread_mutex_unlock(&srv->mu);
	if (rv)
		return rv;
	memset(&r, 0, sizeof(r));
	r.fn = route->handler;
	r.arg = route->arg;
	r.flags = route->flags;
	r.method = dup_s(route->method);
	r.pattern = dup_s(route->pattern);
	if (!r.method || !r.pattern) {
		rv = MER_ENOMEM;
		goto out_free;
	}
	rv = route_compile(&r, route->pattern);
	if (rv)
		goto out_free;
	for (size_t i = 0; i < srv->nroutes; i++) {
		if (strcmp(srv->routes[i].shape, r.shape) == 0 &&
		    strcmp(srv->routes[i].method, r.method) == 0) {
			rv = MER_EEXIST;
			goto out_free;
		}
	}
	grown = realloc(srv->routes, (srv->nroutes + 1) * sizeof(*grown));
	if (!grown) {
		rv = MER_ENOMEM;
		goto out_free;
	}
	srv->routes = grown;
	srv->routes[srv->nroutes++] = r;
	return 0;

out_free:
	route_free(&r);
	return rv;
}

int mer_http_server_add_routes(struct mer_http_server *srv,
			       const struct mer_http_route *routes, size_t n)
{
	for (size_t i = 0; i < n; i++) {
		int rv = mer_http_server_add_route(srv, &routes[i]);

		if (rv)
			return rv;
	}
	return 0;
}

struct seg_ref {
	const char *p;
	size_t n;
};

static bool route_match(const struct route *r, const struct seg_ref *segs,
			size_t nsegs)
{
	if (r->nsegs != nsegs)
		return false;
	for (size_t i = 0; i < nsegs; i++) {
		const struct route_seg *s = &r->segs[i];
		size_t ll = strlen(s->lit);

		if (!s->param) {
			if (segs[i].n != ll || memcmp(segs[i].p, s->lit, ll))
				return false;
			continue;
		}
		/* A parameter takes at least one character before its
		 * suffix. */
		if (segs[i].n <= ll ||
		    memcmp(segs[i].p + segs[i].n - ll, s->lit, ll) != 0)
			return false;
	}
	return true;
}

/* Fills req->params from the segments for route r. */
static int route_bind(struct mer_http_req *req, const struct route *r,
		      const struct seg_ref *segs)
{
	for (size_t i = 0; i < r->nsegs; i++) {
		const struct route_seg *s = &r->segs[i];
		struct kv *kv;
		int rv;

		if (!s->param)
			continue;
		if (req->nparams == HTTP_MAX_PARAMS)
			return MER_ETOOBIG;
		kv = &req->params[req->nparams];
		rv = pct_decode(segs[i].p, segs[i].n - strlen(s->lit), false,
				&kv->value);
		if (rv)
			return rv;
		kv->name = dup_s(s->param);
		if (!kv->name) {
			free(kv->value);
			return MER_ENOMEM;
		}
		req->nparams++;
	}
	return 0;
}

/*
 * Finds the route for method and the raw path. Returns the route, or NULL
 * with *allow filled (405: the methods of the best-matching pattern) or
 * left empty (404).
 */
static const struct route *route_find(struct mer_http_server *srv,
				      const char *method,
				      const struct seg_ref *segs, size_t nsegs,
				      char *allow, size_t allowlen,
				      const char **label)
{
	const struct route *best = NULL;
	const char *want = strcmp(method, "HEAD") == 0 ? "GET" : method;
	size_t off = 0;
	bool has_get = false, has_head = false;

	allow[0] = '\0';
	for (size_t i = 0; i < srv->nroutes; i++) {
		const struct route *r = &srv->routes[i];

		if (route_match(r, segs, nsegs) &&
		    (!best || r->nliteral > best->nliteral))
			best = r;
	}
	if (!best)
		return NULL;
	*label = best->pattern;
	for (size_t i = 0; i < srv->nroutes; i++) {
		const struct route *r = &srv->routes[i];

		if (strcmp(r->shape, best->shape) == 0 &&
		    strcmp(r->method, want) == 0)
			return r;
	}
	for (size_t i = 0; i < srv->nroutes; i++) {
		const struct route *r = &srv->routes[i];
		int n;

		if (strcmp(r->shape, best->shape) != 0)
			continue;
		n = snprintf(allow + off, allowlen - off, "%s%s",
			     off ? ", " : "", r->method);
		if (n > 0 && (size_t)n < allowlen - off)
			off += (size_t)n;
		has_get |= strcmp(r->method, "GET") == 0;
		has_head |= strcmp(r->method, "HEAD") == 0;
	}
	if (has_get && !has_head)
		snprintf(allow + off, allowlen - off, ", HEAD");
	return NULL;
}

/* ---- buffers ---------------------------------------------------------- */

static int buf_reserve(struct buf *b, size_t more)
{
	size_t need = b->len + more, cap;
	char *p;

	if (need <= b->cap)
		return 0;
	cap = b->cap ? b->cap : 512;
	while (cap < need)
		cap *= 2;
	p = realloc(b->p, cap);
	if (!p)
		return MER_ENOMEM;
	b->p = p;
	b->cap = cap;
	return 0;
}

static int buf_add(struct buf *b, const void *data, size_t n)
{
	if (buf_reserve(b, n))
		return MER_ENOMEM;
	memcpy(b->p + b->len, data, n);
	b->len += n;
	return 0;
}

static int buf_addf(struct buf *b, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static int buf_addf(struct buf *b, const char *fmt, ...)
{
	for (;;) {
		size_t room = b->cap - b->len;
		va_list ap;
		int n;

		va_start(ap, fmt);
		n = vsnprintf(b->p ? b->p + b->len : NULL, room, fmt, ap);
		va_end(ap);
		if (n < 0)
			return MER_EINVAL;
		if ((size_t)n < room) {
			b->len += (size_t)n;
			return 0;
		}
		if (buf_reserve(b, (size_t)n + 1))
			return MER_ENOMEM;
	}
}

static void buf_free(struct buf *b)
{
	free(b->p);
	memset(b, 0, sizeof(*b));
}

/* Drops the first n bytes of b. */
static void buf_consume(struct buf *b, size_t n)
{
	if (n >= b->len) {
		b->len = 0;
		return;
	}
	memmove(b->p, b->p + n, b->len - n);
	b->len -= n;
}

/* ---- answers ------------------------------------------------------------ */

static const char *reason(int status)
{
	switch (status) {
	case 200:
		return "OK";
	case 201:
		return "Created";
	case 202:
		return "Accepted";
	case 204:
		return "No Content";
	case 301:
		return "Moved Permanently";
	case 302:
		return "Found";
	case 303:
		return "See Other";
	case 304:
		return "Not Modified";
	case 307:
		return "Temporary Redirect";
	case 308:
		return "Permanent Redirect";
	case 400:
		return "Bad Request";
	case 401:
		return "Unauthorized";
	case 403:
		return "Forbidden";
	case 404:
		return "Not Found";
	case 405:
		return "Method Not Allowed";
	case 406:
		return "Not Acceptable";
	case 408:
		return "Request Timeout";
	case 409:
		return "Conflict";
	case 410:
		return "Gone";
	case 411:
		return "Length Required";
	case 412:
		return "Precondition Failed";
	case 413:
		return "Content Too Large";
	case 415:
		return "Unsupported Media Type";
	case 417:
		return "Expectation Failed";
	case 422:
		return "Unprocessable Content";
	case 428:
		return "Precondition Required";
	case 429:
		return "Too Many Requests";
	case 431:
		return "Request Header Fields Too Large";
	case 500:
		return "Internal Server Error";
	case 501:
		return "Not Implemented";
	case 502:
		return "Bad Gateway";
	case 503:
		return "Service Unavailable";
	case 504:
		return "Gateway Timeout";
	case 505:
		return "HTTP Version Not Supported";
	}
	return status < 300 ? "OK" : status < 400 ? "Redirect" : "Error";
}

/*
 * Serializes job->res into job->out: status line, headers, body, in one
 * buffer so a small answer leaves in one write. On failure job->status
 * stays 0 and the connection is closed without an answer.
 */
static void job_serialize(struct http_job *job)
{
	struct mer_http_res *res = &job->res;
	struct buf *b = &job->out;
	int status, rv;
	bool has_len;

	if (res->oom)
		res_errorf(res, 500, "internal", "out of memory");
	/* A handler that set nothing answers 204; a 1xx cannot end one. */
	status = res->status ? res->status : 204;
	if (status < 200 || status > 599)
		status = 500;
	/* 204 and 304 carry no length and no body (RFC 9110). */
	has_len = status != 204 && status != 304;
	b->len = 0;
	b->off = 0;
	rv = buf_reserve(b, 160 + (has_len && !job->is_head ? res->len : 0));
	if (!rv)
		rv = buf_addf(b, "HTTP/1.1 %d %s\r\n", status, reason(status));
	if (!rv && res->body && res->ctype)
		rv = buf_addf(b, "Content-Type: %s\r\n", res->ctype);
	if (!rv && has_len)
		rv = buf_addf(b, "Content-Length: %zu\r\n",
			      res->body ? res->len : 0);
	for (size_t i = 0; !rv && i < res->nhdrs; i++)
		rv = buf_addf(b, "%s: %s\r\n", res->hdrs[i].name,
			      res->hdrs[i].value);
	if (!rv && job->close)
		rv = buf_addf(b, "Connection: close\r\n");
	else if (!rv && job->keepalive10)
		rv = buf_addf(b, "Connection: keep-alive\r\n");
	if (!rv)
		rv = buf_add(b, "\r\n", 2);
	if (!rv && has_len && !job->is_head && res->body && res->len)
		rv = buf_add(b, res->body, res->len);
	if (rv) {
		buf_free(b);
		job->status = 0;
		return;
	}
	job->status = status;
}

static void job_observe(struct http_job *job, int status)
{
	struct mer_http_server *srv = job->srv;
	const char *route = mer_http_req_route(&job->req);
	double s = elapsed_s(&job->t0);

	if (srv->observe)
		srv->observe(srv->observe_arg, job->label, route, status, s);
	if (status >= 500)
		mer_warn("http request", "method=%s route=%s status=%d ms=%.1f",
			 job->label, route, status, s * 1e3);
	else
		mer_debug("http request",
			  "method=%s route=%s status=%d ms=%.1f", job->label,
			  route, status, s * 1e3);
}

static struct http_job *job_new(struct mer_http_server *srv)
{
	struct http_job *job = calloc(1, sizeof(*job));

	if (!job)
		return NULL;
	job->srv = srv;
	job->req.job = job;
	job->label = "OTHER";
	clock_gettime(CLOCK_MONOTONIC, &job->t0);
	return job;
}

static void job_free(struct http_job *job)
{
	if (!job)
		return;
	req_free(&job->req);
	res_reset(&job->res);
	buf_free(&job->out);
	free(job->head);
	free(job);
}

/* ---- workers ---------------------------------------------------------- */

/* Hands job to a worker. Returns NULL, or the error code to answer with
 * when the queue is full ("busy") or the server is stopping. */
static const char *job_enqueue(struct http_job *job)
{
	struct mer_http_server *srv = job->srv;
	const char *code = NULL;

	pthread_mutex_lock(&srv->mu);
	if (srv->quit || srv->state != S_STARTED) {
		code = "unavailable";
	} else if (srv->queued >= srv->max_queue) {
		code = "busy";
	} else {
		job->next = NULL;
		if (srv->qtail)
			srv->qtail->next = job;
		else
			srv->qhead = job;
		srv->qtail = job;
		srv->queued++;
		job->in_queue = true;
		pthread_cond_signal(&srv->work_cv);
	}
	pthread_mutex_unlock(&srv->mu);
	return code;
}

static void job_run(struct http_job *job)
{
	struct mer_http_server *srv = job->srv;
	struct mer_http_req *req = &job->req;
	struct mer_http_res *res = &job->res;
	const struct route *r = req->route;
	char err[512];
	int rv;

	if (r->flags & (MER_HTTP_JSON_BODY | MER_HTTP_JSON_OPTIONAL)) {
		if (req->body_len == 0) {
			if (r->flags & MER_HTTP_JSON_BODY) {
				res_errorf(res, 400, "body_required",
					   "this request needs a JSON body");
				goto send;
			}
		} else {
			err[0] = '\0';
			rv = mer_json_doc_parse("request body", req->body,
						req->body_len, srv->max_body,
						srv->max_depth, &req->doc, err,
						sizeof(err));
			if (rv == MER_ENOMEM) {
				res_errorf(res, 500, "internal",
					   "out of memory");
				goto send;
			}
			if (rv) {
				res_errorf(res, 400, "invalid_json", "%s",
					   err[0] ? err : "malformed JSON");
				goto send;
			}
			req->has_doc = true;
		}
	}
	rv = r->fn(req, res, r->arg);
	if (rv != 0 && !res->is_error)
		res_errorf(res, mer_http_status_for_err(rv), mer_errname(rv),
			   "%s", mer_strerror(rv));
send:
	/* Serialized here, so the I/O thread only copies bytes. */
	job_serialize(job);
}

static void wake_io(struct mer_http_server *srv)
{
	uint64_t one = 1;

	/* Fails only when the counter is saturated: it is readable then. */
	if (write(srv->efd, &one, sizeof(one)) < 0 && errno != EAGAIN)
		mer_warn("http wake failed", "err=%s", strerror(errno));
}

static void *worker_main(void *arg)
{
	struct mer_http_server *srv = arg;

	pthread_mutex_lock(&srv->mu);
	for (;;) {
		struct http_job *job;
		bool skip, wake;

		while (!srv->qhead && !srv->quit)
			pthread_cond_wait(&srv->work_cv, &srv->mu);
		job = srv->qhead;
		if (!job)
			break; /* quit and drained */
		srv->qhead = job->next;
		if (!srv->qhead)
			srv->qtail = NULL;
		srv->queued--;
		job->in_queue = false;
		/* The client has gone: nobody would read the answer. */
		skip = job->cancelled;
		if (!skip)
			srv->busy++;
		pthread_mutex_unlock(&srv->mu);
		if (!skip)
			job_run(job);
		pthread_mutex_lock(&srv->mu);
		if (!skip)
			srv->busy--;
		/* The I/O thread is woken only when the list was empty: it
		 * takes the whole list each time it wakes. */
		wake = srv->done == NULL;
		job->next = srv->done;
		srv->done = job;
		if (wake) {
			pthread_mutex_unlock(&srv->mu);
			wake_io(srv);
			pthread_mutex_lock(&srv->mu);
		}
	}
	pthread_mutex_unlock(&srv->mu);
	return NULL;
}

/* ---- connections: plumbing -------------------------------------------- */

static void srv_note_deadline(struct mer_http_server *srv, uint64_t at)
{
	if (at && (!srv->next_sweep || at < srv->next_sweep))
		srv->next_sweep = at;
}

static void conn_set_deadline(struct conn *c, uint64_t at)
{
	c->deadline = at;
	srv_note_deadline(c->srv, at);
}

/*
 * Closes c at once, without an answer. A request with a worker is marked
 * cancelled and forgotten (its answer is observed as 499 when it comes
 * back); c itself is freed at the end of the loop turn, since an event for
 * it may still be in the batch being handled.
 */
static void conn_close(struct conn *c)
{
	struct mer_http_server *srv = c->srv;
	struct http_job *job = c->job;

	if (c->closed)
		return;
	c->closed = true;
	c->job = NULL;
	if (c->ready) {
		struct conn **pp = &srv->ready;

		/* Not found: it is on the list srv_run_ready() is going
		 * through, which skips closed connections. */
		while (*pp && *pp != c)
			pp = &(*pp)->rnext;
		if (*pp) {
			*pp = c->rnext;
			c->ready = false;
			c->rnext = NULL;
		}
	}
	if (job && c->state == C_WORK) {
		bool dropped = false;

		pthread_mutex_lock(&srv->mu);
		job->cancelled = true;
		/* Still waiting for a worker: give its queue slot back now
		 * rather than when a worker gets to skip it. */
		if (job->in_queue) {
			struct http_job **pp = &srv->qhead, *prev = NULL;

			while (*pp != job) {
				prev = *pp;
				pp = &(*pp)->next;
			}
			*pp = job->next;
			if (srv->qtail == job)
				srv->qtail = prev;
			srv->queued--;
			job->in_queue = false;
			dropped = true;
		}
		pthread_mutex_unlock(&srv->mu);
		job->conn = NULL;
		if (dropped) {
			job_observe(job, 499);
			job_free(job);
		}
	} else if (job) {
		job_observe(job, 499);
		job_free(job);
	}
	if (c->ssl) {
		SSL_free(c->ssl);
		c->ssl = NULL;
	}
	close(c->fd); /* also leaves the epoll set */
	c->fd = -1;
	if (c->prev)
		c->prev->next = c->next;
	else
		srv->conns = c->next;
	if (c->next)
		c->next->prev = c->prev;
	c->prev = NULL;
	c->next = srv->zombies;
	srv->zombies = c;
	pthread_mutex_lock(&srv->mu);
	srv->nconns--;
	pthread_mutex_unlock(&srv->mu);
}

static void zombies_free(struct mer_http_server *srv)
{
	while (srv->zombies) {
		struct conn *c = srv->zombies;

		srv->zombies = c->next;
		buf_free(&c->in);
		buf_free(&c->out);
		free(c);
	}
}

enum { IO_AGAIN = -1, IO_ERR = -2 };

/*
 * One transfer of up to n bytes: a read into rp (rd), or a write from wp.
 * The count, 0 at end of stream (reads only), IO_AGAIN or IO_ERR.
 */
static ssize_t conn_io(struct conn *c, int rd, char *rp, const char *wp,
		       size_t n)
{
	ssize_t r;

	if (n > INT32_MAX)
		n = INT32_MAX;
	if (c->ssl) {
		int k, e;

		ERR_clear_error();
		k = rd ? SSL_read(c->ssl, rp, (int)n)
		       : SSL_write(c->ssl, wp, (int)n);
		if (k > 0)
			return k;
		e = SSL_get_error(c->ssl, k);
		if (e == SSL_ERROR_WANT_READ || e == SSL_ERROR_WANT_WRITE)
			return IO_AGAIN;
		/* A TLS close_notify ends a read cleanly; a write cannot
		 * go on after it. */
		return rd && e == SSL_ERROR_ZERO_RETURN ? 0 : IO_ERR;
	}
	do
		r = rd ? recv(c->fd, rp, n, 0)
		       : send(c->fd, wp, n, MSG_NOSIGNAL);
	while (r < 0 && errno == EINTR);
	if (r >= 0)
		return r;
	return errno == EAGAIN || errno == EWOULDBLOCK ? IO_AGAIN : IO_ERR;
}

static ssize_t conn_recv(struct conn *c, char *p, size_t n)
{
	return conn_io(c, 1, p, NULL, n);
}

static ssize_t conn_send(struct conn *c, const char *p, size_t n)
{
	return conn_io(c, 0, NULL, p, n);
}

/*
 * Writes pending output. 0: all written; 1: some remains (EPOLLOUT will
 * bring us back); -1: the connection is closed. The write deadline runs
 * while output waits and restarts whenever the client takes some.
 */
static int conn_flush(struct conn *c)
{
	struct mer_http_server *srv = c->srv;
	bool progress = false;

	while (c->out.off < c->out.len) {
		ssize_t n = conn_send(c, c->out.p + c->out.off,
				      c->out.len - c->out.off);

		if (n > 0) {
			c->out.off += (size_t)n;
			progress = true;
			continue;
		}
		if (n == IO_AGAIN) {
			if (progress || !c->wdeadline) {
				c->wdeadline = srv->now + srv->write_timeout_ms;
				srv_note_deadline(srv, c->wdeadline);
			}
			return 1;
		}
		conn_close(c);
		return -1;
	}
	c->out.off = 0;
	c->out.len = 0;
	c->wdeadline = 0;
	/* Do not keep a large answer's buffer on an idle connection. */
	if (c->out.cap > ((size_t)64 << 10))
		buf_free(&c->out);
	return 0;
}

/*
 * Takes job's answer for c (the job is freed): observed now, written by
 * conn_run. close: the connection ends after it.
 */
static void conn_answer(struct conn *c, struct http_job *job)
{
	c->job = NULL;
	if (job->status == 0) {
		job_observe(job, 500);
		job_free(job);
		conn_close(c);
		return;
	}
	job_observe(job, job->status);
	if (c->out.off == c->out.len) {
		buf_free(&c->out);
		c->out = job->out;
		memset(&job->out, 0, sizeof(job->out));
	} else if (buf_add(&c->out, job->out.p, job->out.len) != 0) {
		job_free(job);
		conn_close(c);
		return;
	}
	c->close_after = job->close;
	job_free(job);
	c->state = C_FLUSH;
	c->deadline = 0;
}

/*
 * Answers with a JSON error from the I/O thread. job may be NULL when the
 * request did not get that far (431, 408): one is made for the answer.
 * close: the connection ends after the answer.
 */
static void conn_fail(struct conn *c, struct http_job *job, int status,
		      const char *code, const char *msg, bool close)
{
	if (!job)
		job = job_new(c->srv);
	if (!job) {
		conn_close(c);
		return;
	}
	res_errorf(&job->res, status, code, "%s", msg);
	if (status == 503 && strcmp(code, "busy") == 0)
		mer_http_res_header(&job->res, "Retry-After", "1");
	if (close)
		job->close = true;
	job_serialize(job);
	conn_answer(c, job);
}

/* After an answer that closes: stop writing, drain what the client still
 * sends for a little while, then close (see HTTP_LINGER_MS). */
static void conn_linger(struct conn *c)
{
	if (c->ssl) {
		/* close_notify, best effort: the socket is non-blocking. */
		ERR_clear_error();
		(void)SSL_shutdown(c->ssl);
	}
	(void)shutdown(c->fd, SHUT_WR);
	c->state = C_LINGER;
	c->lingered = 0;
	conn_set_deadline(c, c->srv->now + HTTP_LINGER_MS);
}

static void conn_drain(struct conn *c)
{
	char tmp[4096];

	for (;;) {
		ssize_t r = recv(c->fd, tmp, sizeof(tmp), 0);

		if (r > 0) {
			c->lingered += (size_t)r;
			if (c->lingered > HTTP_LINGER_BYTES)
				break;
			continue;
		}
		if (r < 0 && errno == EINTR)
			continue;
		if (r < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
			return;
		break;
	}
	conn_close(c);
}

/*
 * Reads what has arrived into c->in, up to limit bytes in all. 1: bytes
 * arrived; 0: none for now; -1: closed (end of stream or error); -2: the
 * buffer is at limit.
 */
static int conn_fill(struct conn *c, size_t limit)
{
	ssize_t n;

	if (c->in.len >= limit)
		return -2;
	if (c->in.len == c->in.cap) {
		size_t cap = c->in.cap ? c->in.cap * 2 : HTTP_IN_MIN;
		char *p;

		if (cap > limit)
			cap = limit;
		p = realloc(c->in.p, cap + 1);
		if (!p) {
			conn_close(c);
			return -1;
		}
		c->in.p = p;
		c->in.cap = cap;
	}
	n = conn_recv(c, c->in.p + c->in.len, c->in.cap - c->in.len);
	if (n > 0) {
		c->in.len += (size_t)n;
		return 1;
	}
	if (n == IO_AGAIN)
		return 0;
	conn_close(c);
	return -1;
}

/* ---- connections: requests -------------------------------------------- */

static bool tchar(int c)
{
	return isalnum(c) || (c && strchr("!#$%&'*+-.^_`|~", c));
}

/* Whether s is all tchars (RFC 9110 5.6.2); "" is, its callers rule it out. */
static bool is_token(const char *s)
{
	for (; *s; s++)
		if (!tchar((unsigned char)*s))
			return false;
	return true;
}

/* Parses the number in Content-Length: digits only, no sign. */
static int parse_length(const char *s, uint64_t *out)
{
	uint64_t v = 0;

	if (!*s)
		return MER_EINVAL;
	for (; *s; s++) {
		if (!isdigit((unsigned char)*s))
			return MER_EINVAL;
		if (v > (UINT64_MAX - 9) / 10)
			return MER_EINVAL;
		v = v * 10 + (uint64_t)(*s - '0');
	}
	*out = v;
	return 0;
}

/* Whether a comma-separated header value lists token (case-insensitive). */
static bool has_token(const char *v, const char *token)
{
	size_t tl = strlen(token);

	while (*v) {
		const char *e;
		size_t n;

		while (*v == ' ' || *v == '\t' || *v == ',')
			v++;
		e = v;
		while (*e && *e != ',')
			e++;
		n = (size_t)(e - v);
		while (n && (v[n - 1] == ' ' || v[n - 1] == '\t'))
			n--;
		if (n == tl && strncasecmp(v, token, tl) == 0)
			return true;
		v = e;
	}
	return false;
}

/* What head_parse found out beyond the request itself. */
struct head_info {
	int minor; /* HTTP/1.minor */
	unsigned hosts;
	unsigned lengths;
	uint64_t length;
	bool bad_length;
	bool chunked; /* any Transfer-Encoding */
	bool conn_close;
	bool conn_keepalive;
	const char *expect;
	const char *target;
};

/* A refusal found while parsing. */
struct head_err {
	int status;
	const char *code;
	const char *msg;
};

static int head_refuse(struct head_err *e, int status, const char *code,
		       const char *msg)
{
	e->status = status;
	e->code = code;
	e->msg = msg;
	return MER_EINVAL;
}

/* Checks "HTTP/1.1": 0 with *minor, or fills e (505 for another version,
 * 400 for something that is not a version). */
static int parse_version(const char *v, int *minor, struct head_err *e)
{
	const char *p = v + 5;
	bool digits = false;

	if (strcmp(v, "HTTP/1.1") == 0 || strcmp(v, "HTTP/1.0") == 0) {
		*minor = v[7] - '0';
		return 0;
	}
	if (strncmp(v, "HTTP/", 5) != 0)
		return head_refuse(e, 400, "invalid_request",
				   "malformed request line");
	while (isdigit((unsigned char)*p)) {
		p++;
		digits = true;
	}
	if (digits && *p == '.' && isdigit((unsigned char)p[1])) {
		for (p++; isdigit((unsigned char)*p);)
			p++;
	}
	if (!digits || *p)
		return head_refuse(e, 400, "invalid_request",
				   "malformed request line");
	return head_refuse(e, 505, "http_version",
			   "only HTTP/1.0 and HTTP/1.1 are supported");
}

/*
 * Parses job->head (n bytes: the request line, the headers, the empty
 * line) in place, filling req->method, req->hdrs and hi. Strict where
 * leniency would let two parsers disagree about where a request ends
 * (request smuggling): no folded lines, no space before a colon, one
 * Content-Length of digits, no bare CR.
 */
static int head_parse(struct mer_http_server *srv, struct http_job *job,
		      size_t n, struct head_info *hi, struct head_err *e)
{
	struct mer_http_req *req = &job->req;
	char *p = job->head, *end = job->head + n, *line, *sp1, *sp2;
	size_t lines = 0, ll;

	memset(hi, 0, sizeof(*hi));
	for (size_t i = 0; i < n; i++) {
		if (p[i] == '\n')
			lines++;
		else if (p[i] == '\0')
			return head_refuse(e, 400, "invalid_request",
					   "NUL byte in the request head");
	}
	if (lines > 2 && lines - 2 > srv->max_headers)
		return head_refuse(e, 431, "request_header_too_large",
				   "too many header fields");
	req->hdrs = calloc(lines ? lines : 1, sizeof(*req->hdrs));
	if (!req->hdrs)
		return head_refuse(e, 500, "internal", "out of memory");

	for (bool first = true; p < end; first = false) {
		char *nl = memchr(p, '\n', (size_t)(end - p));

		line = p;
		p = nl + 1;
		ll = (size_t)(nl - line);
		if (ll && line[ll - 1] == '\r')
			ll--;
		line[ll] = '\0';
		if (memchr(line, '\r', ll))
			return head_refuse(e, 400, "invalid_request",
					   "bare CR in the request head");
		if (ll == 0)
			break; /* the empty line that ends the head */
		if (first) {
			sp1 = memchr(line, ' ', ll);
			sp2 = sp1 ? strchr(sp1 + 1, ' ') : NULL;
			if (!sp1 || !sp2 || sp1 == line || sp2 == sp1 + 1 ||
			    strchr(sp2 + 1, ' '))
				return head_refuse(e, 400, "invalid_request",
						   "malformed request line");
			*sp1 = '\0';
			*sp2 = '\0';
			if (!is_token(line))
				return head_refuse(e, 400, "invalid_request",
						   "malformed request method");
			for (char *t = sp1 + 1; *t; t++)
				if ((unsigned char)*t <= 0x20 ||
				    (unsigned char)*t >= 0x7f)
					return head_refuse(
					    e, 400, "invalid_request",
					    "malformed request target");
			/* Known before the version is checked, so a 505
			 * is observed with its method. */
			req->method = line;
			if (parse_version(sp2 + 1, &hi->minor, e))
				return MER_EINVAL;
			hi->target = sp1 + 1;
			continue;
		}
		if (line[0] == ' ' || line[0] == '\t')
			return head_refuse(e, 400, "invalid_request",
					   "folded header lines are not "
					   "supported");
		{
			char *colon = strchr(line, ':'), *v, *ve;

			if (!colon || colon == line)
				return head_refuse(e, 400, "invalid_request",
						   "malformed header line");
			*colon = '\0';
			if (!is_token(line))
				return head_refuse(e, 400, "invalid_request",
						   "malformed header name");
			v = colon + 1;
			while (*v == ' ' || *v == '\t')
				v++;
			ve = v + strlen(v);
			while (ve > v && (ve[-1] == ' ' || ve[-1] == '\t'))
				ve--;
			*ve = '\0';
			for (char *q = v; *q; q++)
				if (((unsigned char)*q < 0x20 && *q != '\t') ||
				    (unsigned char)*q == 0x7f)
					return head_refuse(
					    e, 400, "invalid_request",
					    "control character in a header");
			req->hdrs[req->nhdrs].name = line;
			req->hdrs[req->nhdrs].value = v;
			req->nhdrs++;
			if (strcasecmp(line, "Host") == 0) {
				hi->hosts++;
			} else if (strcasecmp(line, "Content-Length") == 0) {
				hi->lengths++;
				if (parse_length(v, &hi->length) != 0)
					hi->bad_length = true;
			} else if (strcasecmp(line, "Transfer-Encoding") == 0) {
				hi->chunked = true;
			} else if (strcasecmp(line, "Connection") == 0) {
				hi->conn_close |= has_token(v, "close");
				hi->conn_keepalive |=
				    has_token(v, "keep-alive");
			} else if (strcasecmp(line, "Expect") == 0) {
				hi->expect = v;
			}
		}
	}
	if (!req->method)
		return head_refuse(e, 400, "invalid_request",
				   "malformed request line");
	return 0;
}

/*
 * Splits the target into path and query, finds the route and binds its
 * parameters. Problems become job->res with job->early set (the framing
 * is sound, so the connection can go on after the body); MER_ENOMEM is
 * returned.
 */
static int job_route(struct mer_http_server *srv, struct http_job *job,
		     char *target)
{
	struct mer_http_req *req = &job->req;
	struct seg_ref segs[HTTP_MAX_SEGMENTS];
	size_t nsegs = 0;
	char allow[256], *q, *hash;
	const char *p;
	bool too_deep = false;
	int rv;

	/* Absolute form (GET http://host/path): drop scheme and authority. */
	if (strncasecmp(target, "http://", 7) == 0 ||
	    strncasecmp(target, "https://", 8) == 0) {
		char *auth = strstr(target, "://") + 3;
		char *slash = strpbrk(auth, "/?#");

		if (slash && *slash == '/') {
			target = slash;
		} else if (slash) {
			/* "http://h?x": the path is "/"; the byte before the
			 * '?' belongs to the authority, which is dropped. */
			slash[-1] = '/';
			target = slash - 1;
		} else {
			target = NULL;
			req->path = "/";
		}
	}
	if (target) {
		hash = strchr(target, '#');
		if (hash)
			*hash = '\0';
		q = strchr(target, '?');
		if (q)
			*q++ = '\0';
		req->path = target;
		if (q) {
			rv = parse_query(req, q);
			if (rv == MER_ENOMEM)
				return rv;
			if (rv) {
				res_errorf(&job->res, 400, "invalid_request",
					   "%s",
					   rv == MER_ETOOBIG
					       ? "too many query parameters"
					       : "bad percent-encoding in the "
						 "query");
				job->early = true;
				return 0;
			}
		}
	}
	if (req->path[0] != '/') {
		res_errorf(&job->res, 400, "invalid_request",
			   "the request target must be a path");
		job->early = true;
		return 0;
	}
	p = req->path;
	if (strcmp(p, "/") != 0) {
		while (*p == '/') {
			const char *s = p + 1, *e = strchr(s, '/');

			/* Deeper than any pattern can be: no route. */
			if (nsegs == HTTP_MAX_SEGMENTS) {
				too_deep = true;
				break;
			}
			segs[nsegs].p = s;
			segs[nsegs].n = e ? (size_t)(e - s) : strlen(s);
			nsegs++;
			p = s + segs[nsegs - 1].n;
		}
	}
	allow[0] = '\0';
	req->route = too_deep ? NULL
			      : route_find(srv, req->method, segs, nsegs, allow,
					   sizeof(allow), &req->route_label);
	if (!req->route) {
		if (allow[0]) {
			res_errorf(&job->res, 405, "method_not_allowed",
				   "%s is not allowed here; allowed: %s",
				   req->method, allow);
			mer_http_res_header(&job->res, "Allow", allow);
		} else {
			res_errorf(&job->res, 404, "not_found",
				   "no such resource");
		}
		job->early = true;
	} else if ((rv = route_bind(req, req->route, segs)) != 0) {
		if (rv == MER_ENOMEM)
			return rv;
		res_errorf(&job->res, 400, "invalid_request",
			   "bad percent-encoding in the path");
		job->early = true;
	}
	return 0;
}

/* The request (head and body) is complete: answer it now or queue it. */
static void conn_dispatch(struct conn *c, struct http_job *job)
{
	const char *code;

	c->job = NULL;
	if (job->early) {
		job_serialize(job);
		conn_answer(c, job);
		return;
	}
	job->conn = c;
	code = job_enqueue(job);
	if (code) {
		job->conn = NULL;
		if (strcmp(code, "busy") == 0)
			conn_fail(c, job, 503, code,
				  "all workers are busy, try again", false);
		else
			conn_fail(c, job, 503, code, "the server is stopping",
				  true);
		return;
	}
	c->job = job;
	c->state = C_WORK;
	c->deadline = 0;
}

/*
 * A whole head is in c->in (n bytes): parse it, take it out of the buffer
 * and decide: refuse, read the body, answer or queue.
 */
static void conn_request(struct conn *c, size_t n)
{
	struct mer_http_server *srv = c->srv;
	struct http_job *job = job_new(srv);
	struct head_info hi;
	struct head_err e;

	if (!job) {
		conn_close(c);
		return;
	}
	job->head = malloc(n + 1);
	if (!job->head) {
		job_free(job);
		conn_close(c);
		return;
	}
	memcpy(job->head, c->in.p, n);
	job->head[n] = '\0';
	buf_consume(&c->in, n);
	c->scan = 0;
	/* Until the framing is known to be sound, the answer closes. */
	job->close = true;
	if (head_parse(srv, job, n, &hi, &e) != 0) {
		if (job->req.method)
			job->label = method_label(job->req.method);
		conn_fail(c, job, e.status, e.code, e.msg, true);
		return;
	}
	job->label = method_label(job->req.method);
	job->is_head = strcmp(job->req.method, "HEAD") == 0;
	if (hi.minor == 1 && hi.hosts != 1) {
		conn_fail(c, job, 400, "invalid_request",
			  "HTTP/1.1 requests need exactly one Host header",
			  true);
		return;
	}
	if (hi.hosts > 1) {
		conn_fail(c, job, 400, "invalid_request",
			  "more than one Host header", true);
		return;
	}
	if (hi.bad_length || hi.lengths > 1) {
		conn_fail(c, job, 400, "invalid_request", "bad Content-Length",
			  true);
		return;
	}
	if (hi.chunked) {
		conn_fail(c, job, 411, "length_required",
			  "request bodies need a Content-Length "
			  "(chunked uploads are not supported)",
			  true);
		return;
	}
	if (hi.expect && strcasecmp(hi.expect, "100-continue") != 0) {
		conn_fail(c, job, 417, "expectation_failed",
			  "only Expect: 100-continue is supported", true);
		return;
	}
	job->close = hi.conn_close || (hi.minor == 0 && !hi.conn_keepalive);
	job->keepalive10 = hi.minor == 0 && !job->close;
	if (job_route(srv, job, (char *)hi.target) != 0) {
		conn_fail(c, job, 500, "internal", "out of memory", true);
		return;
	}
	if (hi.length > srv->max_body) {
		/* The body is not read: the connection cannot go on. */
		res_reset(&job->res);
		conn_fail(c, job, 413, "too_large",
			  "the request body is over the size limit", true);
		return;
	}
	job->body_want = (size_t)hi.length;
	/* An HTTP/1.0 client cannot parse an interim 100: its expectation
	 * is ignored (RFC 9110 10.1.1). */
	job->expect = hi.expect != NULL && hi.minor == 1;
	if (job->early && job->expect && job->body_want) {
		/* A client waiting for 100 that we tell no at once will not
		 * send the body: answer and close. */
		job->close = true;
		conn_dispatch(c, job);
		return;
	}
	if (job->body_want == 0) {
		conn_dispatch(c, job);
		return;
	}
	/* Body bytes may already be here; then the client did not wait for
	 * the 100. */
	if (job->expect && c->in.len == 0 &&
	    buf_add(&c->out, continue_line, sizeof(continue_line) - 1) != 0) {
		job_free(job);
		conn_close(c);
		return;
	}
	c->job = job;
	c->state = C_BODY;
	conn_set_deadline(c, srv->now + srv->body_timeout_ms);
}

/*
 * Looks for the end of the head in c->in. Returns its length (the empty
 * line included) or 0 when it has not all arrived; scanning resumes where
 * it stopped, so a trickled head is not searched over and over.
 */
static size_t head_end(struct conn *c)
{
	const char *p = c->in.p;
	size_t n = c->in.len;

	for (size_t i = c->scan; i < n; i++) {
		if (p[i] != '\n')
			continue;
		if (i + 1 < n && p[i + 1] == '\n')
			return i + 2;
		if (i + 2 < n && p[i + 1] == '\r' && p[i + 2] == '\n')
			return i + 3;
		if (i + 2 >= n) {
			c->scan = i;
			return 0;
		}
	}
	c->scan = n;
	return 0;
}

/* Moves body bytes from c->in and from the socket into the job. 1: the
 * body is complete; 0: wait; -1: the connection is gone. */
static int conn_body(struct conn *c)
{
	struct http_job *job = c->job;
	struct mer_http_req *req = &job->req;

	for (;;) {
		size_t want = job->body_want - req->body_len;
		ssize_t n;

		if (want == 0) {
			req->body[req->body_len] = '\0';
			return 1;
		}
		/* The buffer grows with what arrives rather than with what
		 * Content-Length announces. */
		if (req->body_len == job->body_cap) {
			size_t cap =
			    job->body_cap ? job->body_cap * 2 : HTTP_BODY_CHUNK;
			char *p;

			if (cap > job->body_want)
				cap = job->body_want;
			p = realloc(req->body, cap + 1);
			if (!p) {
				conn_close(c);
				return -1;
			}
			req->body = p;
			job->body_cap = cap;
		}
		want = job->body_cap - req->body_len;
		if (c->in.len) {
			n = (ssize_t)(c->in.len < want ? c->in.len : want);
			memcpy(req->body + req->body_len, c->in.p, (size_t)n);
			buf_consume(&c->in, (size_t)n);
		} else {
			n = conn_recv(c, req->body + req->body_len, want);
			if (n == IO_AGAIN)
				return 0;
			if (n <= 0) {
				conn_close(c);
				return -1;
			}
		}
		req->body_len += (size_t)n;
	}
}

/* Puts c on srv->ready, to run again next loop turn. */
static void conn_defer(struct conn *c)
{
	if (c->ready)
		return;
	c->ready = true;
	c->rnext = c->srv->ready;
	c->srv->ready = c;
}

/*
 * Drives c as far as it can go without waiting: handshake, reads, parsing,
 * writes, the next pipelined request. Edge-triggered epoll only reports
 * new readiness, so every state reads or writes until the kernel says
 * EAGAIN (in C_WORK too, where it only looks for the client going away),
 * or runs out of its steps for this turn and is put on srv->ready.
 */
static void conn_run(struct conn *c)
{
	struct mer_http_server *srv = c->srv;
	unsigned steps = 0;

	while (!c->closed) {
		size_t n;
		int r;

		/* Out of steps for this turn: edge-triggered epoll will not
		 * report what is already readable, so come back next turn
		 * (see srv_run_ready) instead of waiting for an event. */
		if (++steps > HTTP_TURN_STEPS) {
			conn_defer(c);
			return;
		}
		switch (c->state) {
		case C_TLS:
			ERR_clear_error();
			r = SSL_do_handshake(c->ssl);
			if (r == 1) {
				/* The deadline from accept still runs. */
				c->state = C_HEAD;
				break;
			}
			r = SSL_get_error(c->ssl, r);
			if (r != SSL_ERROR_WANT_READ &&
			    r != SSL_ERROR_WANT_WRITE)
				conn_close(c);
			return;
		case C_IDLE:
			r = conn_fill(c, srv->max_header_bytes + 1);
			if (r <= 0)
				return;
			/* The first byte of a request starts its clock. */
			c->state = C_HEAD;
			conn_set_deadline(c, srv->now + srv->header_timeout_ms);
			break;
		case C_HEAD:
			/* Empty lines before a request are allowed (RFC
			 * 9112 2.2). */
			n = 0;
			while (n < c->in.len &&
			       (c->in.p[n] == '\r' || c->in.p[n] == '\n'))
				n++;
			if (n) {
				buf_consume(&c->in, n);
				c->scan = 0;
			}
			n = head_end(c);
			if (n > srv->max_header_bytes ||
			    (!n && c->in.len >= srv->max_header_bytes)) {
				conn_fail(c, NULL, 431,
					  "request_header_too_large",
					  "the request line and headers are "
					  "over the size limit",
					  true);
				break;
			}
			if (n) {
				conn_request(c, n);
				break;
			}
			r = conn_fill(c, srv->max_header_bytes + 1);
			if (r == 0 || r == -1)
				return;
			break;
		case C_BODY:
			if (conn_flush(c) < 0) /* a 100 Continue */
				return;
			r = conn_body(c);
			if (r <= 0)
				return;
			conn_dispatch(c, c->job);
			break;
		case C_WORK:
			if (conn_flush(c) < 0)
				return;
			/* Read on while the handler runs, so a client that
			 * goes away (end of stream, reset) is noticed now:
			 * conn_fill closes, the request is cancelled (skipped
			 * if still queued) and observed as 499. What else
			 * arrives (a pipelined request) waits in c->in, up to
			 * the head limit. */
			r = conn_fill(c, srv->max_header_bytes + 1);
			if (r == 1)
				break;
			return;
		case C_FLUSH:
			if (conn_flush(c) != 0)
				return;
			if (c->close_after) {
				conn_linger(c);
				break;
			}
			if (c->in.len) {
				c->state = C_HEAD;
				conn_set_deadline(
				    c, srv->now + srv->header_timeout_ms);
			} else {
				c->state = C_IDLE;
				conn_set_deadline(c, srv->now +
							 srv->idle_timeout_ms);
			}
			break;
		case C_LINGER:
			conn_drain(c);
			return;
		}
	}
}

/* A deadline passed. */
static void conn_timeout(struct conn *c)
{
	struct http_job *job = c->job;

	switch (c->state) {
	case C_HEAD:
		if (c->in.len == 0) {
			/* Nothing of a request yet: like an idle close. */
			conn_close(c);
			return;
		}
		conn_fail(c, NULL, 408, "timeout",
			  "the request headers did not arrive in time", true);
		break;
	case C_BODY:
		c->job = NULL;
		res_reset(&job->res);
		conn_fail(c, job, 408, "timeout",
			  "the request body did not arrive in time", true);
		break;
	case C_WORK:
	case C_FLUSH:
		return; /* no state deadline */
	case C_TLS:
	case C_IDLE:
	case C_LINGER:
		conn_close(c);
		return;
	}
	conn_run(c);
}

/* ---- the I/O thread ------------------------------------------------------ */

#define BUSY_BODY                                                              \
	"{\"error\":\"busy\",\"message\":\"too many connections, try again "   \
	"later\"}"
_Static_assert(sizeof(BUSY_BODY) - 1 == 66, "Content-Length of BUSY_BODY");
static const char busy_answer[] = "HTTP/1.1 503 Service Unavailable\r\n"
				  "Content-Type: application/json\r\n"
				  "Content-Length: 66\r\n"
				  "Retry-After: 1\r\n"
				  "Connection: close\r\n"
				  "\r\n" BUSY_BODY;

/*
 * Over max_connections: a plain connection gets a 503 at once and is
 * closed; a TLS one is closed (an answer would need a handshake first).
 */
static void conn_refuse(struct mer_http_server *srv, int fd)
{
	if (!srv->tls) {
		char tmp[4096];
		size_t drained = 0;
		ssize_t r;

		/* What the client has sent so far is read so that the close
		 * is less likely to reset the connection (bounded: a client
		 * that keeps sending must not hold the I/O thread). */
		while (drained < HTTP_REFUSE_DRAIN &&
		       (r = recv(fd, tmp, sizeof(tmp), MSG_DONTWAIT)) > 0)
			drained += (size_t)r;
		(void)send(fd, busy_answer, sizeof(busy_answer) - 1,
			   MSG_NOSIGNAL | MSG_DONTWAIT);
		(void)shutdown(fd, SHUT_WR);
	}
	close(fd);
}

static void conn_new(struct mer_http_server *srv, int fd)
{
	struct conn *c = calloc(1, sizeof(*c));
	struct epoll_event ev;
	int one = 1;

	if (!c) {
		close(fd);
		return;
	}
	c->kind = EV_CONN;
	c->srv = srv;
	c->fd = fd;
	(void)setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one));
	if (srv->tls) {
		c->ssl = SSL_new(srv->tls);
		if (!c->ssl || SSL_set_fd(c->ssl, fd) != 1) {
			SSL_free(c->ssl);
			free(c);
			close(fd);
			return;
		}
		SSL_set_accept_state(c->ssl);
		c->state = C_TLS;
	} else {
		c->state = C_HEAD;
	}
	memset(&ev, 0, sizeof(ev));
	ev.events = EPOLLIN | EPOLLOUT | EPOLLRDHUP | EPOLLET;
	ev.data.ptr = c;
	if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, fd, &ev) != 0) {
		SSL_free(c->ssl);
		free(c);
		close(fd);
		return;
	}
	/* The first request's head (and the TLS handshake) must be done
	 * within header_timeout_ms of the accept. */
	conn_set_deadline(c, srv->now + srv->header_timeout_ms);
	c->next = srv->conns;
	if (srv->conns)
		srv->conns->prev = c;
	srv->conns = c;
	pthread_mutex_lock(&srv->mu);
	srv->nconns++;
	pthread_mutex_unlock(&srv->mu);
}

static void listen_pause(struct mer_http_server *srv, bool pause)
{
	struct epoll_event ev;

	memset(&ev, 0, sizeof(ev));
	ev.events = pause ? 0 : EPOLLIN;
	ev.data.ptr = &srv->listen_tag;
	(void)epoll_ctl(srv->epfd, EPOLL_CTL_MOD, srv->lfd, &ev);
}

static void srv_accept(struct mer_http_server *srv)
{
	for (int i = 0; i < HTTP_ACCEPT_BATCH; i++) {
		int fd =
		    accept4(srv->lfd, NULL, NULL, SOCK_NONBLOCK | SOCK_CLOEXEC);
		unsigned n;

		if (fd < 0) {
			if (errno == EINTR || errno == ECONNABORTED)
				continue;
			if (errno == EAGAIN || errno == EWOULDBLOCK)
				return;
			/* Out of descriptors or memory: the listener stays
			 * readable, so stop polling it for a moment rather
			 * than spin. */
			mer_warn("http accept failed", "err=%s",
				 strerror(errno));
			listen_pause(srv, true);
			srv->accept_resume = srv->now + 100;
			srv_note_deadline(srv, srv->accept_resume);
			return;
		}
		/* Only this thread changes nconns. */
		n = srv->nconns;
		if (n >= srv->max_conns) {
			mer_debug("http connection refused", "conns=%u", n);
			conn_refuse(srv, fd);
			continue;
		}
		conn_new(srv, fd);
	}
}

/* Takes the answers the workers have finished and sends them. */
static void srv_take_done(struct mer_http_server *srv)
{
	struct http_job *list, *rev = NULL;

	/* The caller has read the eventfd counter: a job pushed after that
	 * read wakes us again. */
	pthread_mutex_lock(&srv->mu);
	list = srv->done;
	srv->done = NULL;
	pthread_mutex_unlock(&srv->mu);
	while (list) { /* oldest first */
		struct http_job *j = list;

		list = j->next;
		j->next = rev;
		rev = j;
	}
	while (rev) {
		struct http_job *job = rev;
		struct conn *c = job->conn;

		rev = job->next;
		if (!c) {
			job_observe(job, 499);
			job_free(job);
			continue;
		}
		job->conn = NULL;
		conn_answer(c, job);
		conn_run(c);
	}
}

/* Gives the connections that ran out of steps last turn their next
 * turn (those that run out again go back on the list for the next). */
static void srv_run_ready(struct mer_http_server *srv)
{
	struct conn *list = srv->ready;

	srv->ready = NULL;
	while (list) {
		struct conn *c = list;

		list = c->rnext;
		c->rnext = NULL;
		c->ready = false;
		if (!c->closed)
			conn_run(c);
	}
}

static void srv_sweep(struct mer_http_server *srv)
{
	uint64_t next = 0;

	for (struct conn *c = srv->conns, *cn; c; c = cn) {
		cn = c->next;
		if (c->wdeadline && srv->now >= c->wdeadline) {
			/* The client does not read its answer. */
			conn_close(c);
			continue;
		}
		if (c->deadline && srv->now >= c->deadline) {
			c->deadline = 0;
			conn_timeout(c);
			if (c->closed)
				continue;
		}
		if (c->deadline && (!next || c->deadline < next))
			next = c->deadline;
		if (c->wdeadline && (!next || c->wdeadline < next))
			next = c->wdeadline;
	}
	if (srv->accept_resume && srv->now >= srv->accept_resume) {
		srv->accept_resume = 0;
		listen_pause(srv, false);
	}
	if (srv->accept_resume && (!next || srv->accept_resume < next))
		next = srv->accept_resume;
	srv->next_sweep = next;
}

static void *io_main(void *arg)
{
	struct mer_http_server *srv = arg;
	struct epoll_event evs[64];
	sigset_t pipe;
	bool quit = false;

	/* OpenSSL writes with write(2), not send(MSG_NOSIGNAL): a client
	 * that resets must not kill the process. A SIGPIPE raised by this
	 * thread stays pending on it, harmlessly. */
	sigemptyset(&pipe);
	sigaddset(&pipe, SIGPIPE);
	pthread_sigmask(SIG_BLOCK, &pipe, NULL);

	while (!quit) {
		int timeout = -1, n;

		srv->now = mono_ms();
		if (srv->next_sweep)
			timeout = srv->next_sweep <= srv->now
				      ? 0
				      : (int)(srv->next_sweep - srv->now);
		if (srv->ready)
			timeout = 0;
		n = epoll_wait(srv->epfd, evs, 64, timeout);
		if (n < 0 && errno != EINTR) {
			mer_error("http epoll failed", "err=%s",
				  strerror(errno));
			break;
		}
		srv->now = mono_ms();
		for (int i = 0; i < n; i++) {
			struct ev_tag *tag = evs[i].data.ptr;
			struct conn *c;

			if (tag->kind == EV_LISTEN) {
				srv_accept(srv);
				continue;
			}
			if (tag->kind == EV_WAKE) {
				uint64_t v;

				/* Consume the wake-up before looking at
				 * io_quit: stop() sets io_quit before it
				 * writes, so this read cannot swallow its
				 * wake-up unseen (and sleep for ever). */
				if (read(srv->efd, &v, sizeof(v)) < 0 &&
				    errno != EAGAIN)
					mer_warn("http wake read failed",
						 "err=%s", strerror(errno));
				pthread_mutex_lock(&srv->mu);
				quit = srv->io_quit;
				pthread_mutex_unlock(&srv->mu);
				if (!quit)
					srv_take_done(srv);
				continue;
			}
			c = (struct conn *)tag;
			if (c->closed)
				continue;
			if (evs[i].events & (EPOLLERR | EPOLLHUP))
				conn_close(c);
			else
				conn_run(c);
		}
		if (!quit)
			srv_run_ready(srv);
		if (srv->next_sweep && srv->now >= srv->next_sweep)
			srv_sweep(srv);
		zombies_free(srv);
	}
	/* Stopping: no new connections, and every open one ends now. */
	close(srv->lfd);
	srv->lfd = -1;
	while (srv->conns)
		conn_close(srv->conns);
	zombies_free(srv);
	return NULL;
}

/* ---- server ----------------------------------------------------------- */

static void set_err(char *err, size_t errlen, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));

static void set_err(char *err, size_t errlen, const char *fmt, ...)
{
	va_list ap;

	if (!err || errlen == 0)
		return;
	va_start(ap, fmt);
	vsnprintf(err, errlen, fmt, ap);
	va_end(ap);
}

/* Reads a PEM file (bounded) into a NUL-terminated buffer. */
static int read_pem(const char *path, char **out, size_t *lenp, char *err,
		    size_t errlen)
{
	FILE *f = fopen(path, "rb");
	char *buf;
	size_t len;

	*out = NULL;
	if (!f) {
		set_err(err, errlen, "%s: %s", path, strerror(errno));
		return MER_EIO;
	}
	buf = malloc(HTTP_MAX_PEM + 1);
	if (!buf) {
		fclose(f);
		return MER_ENOMEM;
	}
	len = fread(buf, 1, HTTP_MAX_PEM + 1, f);
	if (ferror(f) || len == 0 || len > HTTP_MAX_PEM) {
		set_err(err, errlen, "%s: %s", path,
			ferror(f) ? "read error"
			: len	  ? "file too large"
				  : "empty file");
		sodium_memzero(buf, HTTP_MAX_PEM + 1);
		free(buf);
		fclose(f);
		return MER_EIO;
	}
	fclose(f);
	buf[len] = '\0';
	*out = buf;
	*lenp = HTTP_MAX_PEM + 1;
	return 0;
}

/* A key file must never make OpenSSL prompt on the terminal: an encrypted
 * key is refused. */
static int no_passphrase(char *buf, int size, int rwflag, void *u)
{
	(void)buf;
	(void)size;
	(void)rwflag;
	(void)u;
	return -1;
}

static void tls_errstr(char *out, size_t n)
{
	unsigned long e = ERR_get_error();

	if (e)
		ERR_error_string_n(e, out, n);
	else
		snprintf(out, n, "unknown error");
	ERR_clear_error();
}

/* Loads the certificate (and any chain after it) and the key into a TLS
 * 1.2+ server context. */
static int tls_load(struct mer_http_server *srv, const char *cert_file,
		    const char *key_file, char *err, size_t errlen)
{
	char *cert = NULL, *key = NULL, why[256];
	size_t cert_cap = 0, key_cap = 0;
	BIO *cb = NULL, *kb = NULL;
	X509 *x = NULL, *ca;
	EVP_PKEY *pkey = NULL;
	SSL_CTX *ctx = NULL;
	int rv;

	rv = read_pem(cert_file, &cert, &cert_cap, err, errlen);
	if (rv)
		return rv;
	rv = read_pem(key_file, &key, &key_cap, err, errlen);
	if (rv)
		goto out_cert;
	ERR_clear_error();
	ctx = SSL_CTX_new(TLS_server_method());
	cb = BIO_new_mem_buf(cert, -1);
	kb = BIO_new_mem_buf(key, -1);
	if (!ctx || !cb || !kb) {
		rv = MER_ENOMEM;
		goto out;
	}
	rv = MER_EIO;
	if (SSL_CTX_set_min_proto_version(ctx, TLS1_2_VERSION) != 1)
		goto out_tls;
	SSL_CTX_set_options(ctx, SSL_OP_NO_RENEGOTIATION |
				     SSL_OP_NO_COMPRESSION |
				     SSL_OP_CIPHER_SERVER_PREFERENCE);
	/* Partial writes and a buffer that may move between retries suit
	 * our output buffer; idle connections keep no TLS buffers. */
	SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE |
				  SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER |
				  SSL_MODE_RELEASE_BUFFERS);
	x = PEM_read_bio_X509_AUX(cb, NULL, no_passphrase, NULL);
	if (!x || SSL_CTX_use_certificate(ctx, x) != 1)
		goto out_tls;
	while ((ca = PEM_read_bio_X509(cb, NULL, no_passphrase, NULL))) {
		if (SSL_CTX_add0_chain_cert(ctx, ca) != 1) {
			X509_free(ca);
			goto out_tls;
		}
	}
	ERR_clear_error(); /* the end of the chain reads as an error */
	pkey = PEM_read_bio_PrivateKey(kb, NULL, no_passphrase, NULL);
	if (!pkey || SSL_CTX_use_PrivateKey(ctx, pkey) != 1 ||
	    SSL_CTX_check_private_key(ctx) != 1)
		goto out_tls;
	srv->tls = ctx;
	ctx = NULL;
	rv = 0;
	goto out;

out_tls:
	tls_errstr(why, sizeof(why));
	set_err(err, errlen, "%s, %s: cannot use certificate and key: %s",
		cert_file, key_file, why);
out:
	EVP_PKEY_free(pkey);
	X509_free(x);
	BIO_free(kb);
	BIO_free(cb);
	SSL_CTX_free(ctx);
	sodium_memzero(key, key_cap);
	free(key);
out_cert:
	free(cert);
	return rv;
}

/*
 * Splits "http://HOST[:PORT][/]" (HOST may be "[v6]") into srv->host and
 * srv->port_str. *https says which scheme. MER_EINVAL for anything else.
 */
static int url_split(struct mer_http_server *srv, const char *url, bool *https)
{
	const char *p, *host, *hend, *port = NULL;
	size_t plen = 0;
	char *end;
	long v;

	if (strncmp(url, "http://", 7) == 0) {
		*https = false;
		p = url + 7;
	} else if (strncmp(url, "https://", 8) == 0) {
		*https = true;
		p = url + 8;
	} else {
		return MER_EINVAL;
	}
	if (*p == '[') {
		host = p + 1;
		hend = strchr(host, ']');
		if (!hend)
			return MER_EINVAL;
		p = hend + 1;
	} else {
		host = p;
		hend = p + strcspn(p, ":/");
		p = hend;
	}
	if (hend == host)
		return MER_EINVAL;
	if (*p == ':') {
		port = ++p;
		plen = strcspn(p, "/");
		p += plen;
		if (plen == 0 || plen > 5)
			return MER_EINVAL;
		errno = 0;
		v = strtol(port, &end, 10);
		if (errno || end != p || v < 0 || v > 65535)
			return MER_EINVAL;
	}
	/* The server answers every path: a path in the URL would suggest it
	 * is mounted below one. */
	if (*p && strcmp(p, "/") != 0)
		return MER_EINVAL;
	srv->host = dup_n(host, (size_t)(hend - host));
	srv->port_str = port ? dup_n(port, plen) : dup_s(*https ? "443" : "80");
	if (!srv->host || !srv->port_str)
		return MER_ENOMEM;
	return 0;
}

int mer_http_server_new(const struct mer_http_config *cfg,
			struct mer_http_server **out, char *err, size_t errlen)
{
	struct mer_http_server *srv;
	bool https = false;
	int rv;

	*out = NULL;
	set_err(err, errlen, "%s", "");
	if (!cfg || !cfg->url) {
		set_err(err, errlen, "no URL");
		return MER_EINVAL;
	}
	srv = calloc(1, sizeof(*srv));
	if (!srv)
		return MER_ENOMEM;
	srv->lfd = -1;
	srv->efd = -1;
	srv->epfd = -1;
	srv->listen_tag.kind = EV_LISTEN;
	srv->wake_tag.kind = EV_WAKE;
	pthread_mutex_init(&srv->mu, NULL);
	pthread_cond_init(&srv->work_cv, NULL);
	srv->state = S_NEW;
	rv = url_split(srv, cfg->url, &https);
	if (rv) {
		if (rv == MER_EINVAL)
			set_err(err, errlen,
				"%s: not an http://HOST:PORT or "
				"https://HOST:PORT URL",
				cfg->url);
		goto out_free;
	}
	if (https != (cfg->tls_cert_file != NULL) ||
	    https != (cfg->tls_key_file != NULL)) {
		set_err(err, errlen, "%s: %s", cfg->url,
			https ? "https:// needs a certificate and a key file"
			      : "a certificate and key need an https:// URL");
		rv = MER_EINVAL;
		goto out_free;
	}
	srv->url = dup_s(cfg->url);
	srv->nworkers = cfg->workers ? cfg->workers : HTTP_DEFAULT_WORKERS;
	srv->max_queue = cfg->max_queue ? cfg->max_queue : HTTP_DEFAULT_QUEUE;
	srv->max_body = cfg->max_body ? cfg->max_body : HTTP_DEFAULT_MAX_BODY;
	srv->max_depth =
	    cfg->max_json_depth ? cfg->max_json_depth : MER_JSON_MAX_DEPTH;
	srv->body_timeout_ms = cfg->body_timeout_ms
				   ? cfg->body_timeout_ms
				   : HTTP_DEFAULT_BODY_TIMEOUT_MS;
	srv->header_timeout_ms = cfg->header_timeout_ms
				     ? cfg->header_timeout_ms
				     : HTTP_DEFAULT_HEADER_TIMEOUT_MS;
	srv->idle_timeout_ms = cfg->idle_timeout_ms
				   ? cfg->idle_timeout_ms
				   : HTTP_DEFAULT_IDLE_TIMEOUT_MS;
	srv->write_timeout_ms = cfg->write_timeout_ms
				    ? cfg->write_timeout_ms
				    : HTTP_DEFAULT_WRITE_TIMEOUT_MS;
	srv->max_conns = cfg->max_connections ? cfg->max_connections
					      : HTTP_DEFAULT_MAX_CONNECTIONS;
	srv->max_header_bytes = cfg->max_header_bytes
				    ? cfg->max_header_bytes
				    : HTTP_DEFAULT_MAX_HEADER_BYTES;
	if (srv->max_header_bytes < HTTP_MIN_HEADER_BYTES)
		srv->max_header_bytes = HTTP_MIN_HEADER_BYTES;
	srv->max_headers =
	    cfg->max_headers ? cfg->max_headers : HTTP_DEFAULT_MAX_HEADERS;
	srv->arg = cfg->arg;
	srv->observe = cfg->observe;
	srv->observe_arg = cfg->observe_arg;
	if (!srv->url) {
		rv = MER_ENOMEM;
		goto out_free;
	}
	if (https) {
		rv = tls_load(srv, cfg->tls_cert_file, cfg->tls_key_file, err,
			      errlen);
		if (rv)
			goto out_free;
	}
	*out = srv;
	return 0;

out_free:
	mer_http_server_free(srv);
	return rv;
}

static void workers_stop(struct mer_http_server *srv)
{
	pthread_mutex_lock(&srv->mu);
	srv->quit = true;
	pthread_cond_broadcast(&srv->work_cv);
	pthread_mutex_unlock(&srv->mu);
	for (unsigned i = 0; i < srv->nthreads; i++)
		pthread_join(srv->threads[i], NULL);
	srv->nthreads = 0;
}

/* Binds and listens on srv->host:port_str (the first address that
 * works). */
static int srv_listen(struct mer_http_server *srv)
{
	struct addrinfo hints, *res = NULL, *ai;
	struct sockaddr_storage ss;
	socklen_t sl = sizeof(ss);
	int fd = -1, one = 1, gai, saved = 0;

	memset(&hints, 0, sizeof(hints));
	hints.ai_family = AF_UNSPEC;
	hints.ai_socktype = SOCK_STREAM;
	hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
	gai = getaddrinfo(srv->host, srv->port_str, &hints, &res);
	if (gai) {
		mer_warn("http listen failed", "url=%s err=%s", srv->url,
			 gai_strerror(gai));
		return MER_EIO;
	}
	for (ai = res; ai; ai = ai->ai_next) {
		fd = socket(ai->ai_family,
			    ai->ai_socktype | SOCK_NONBLOCK | SOCK_CLOEXEC,
			    ai->ai_protocol);
		if (fd < 0) {
			saved = errno;
			continue;
		}
		(void)setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one,
				 sizeof(one));
		if (bind(fd, ai->ai_addr, ai->ai_addrlen) == 0 &&
		    listen(fd, 511) == 0)
			break;
		saved = errno;
		close(fd);
		fd = -1;
	}
	freeaddrinfo(res);
	if (fd < 0) {
		mer_warn("http listen failed", "url=%s err=%s", srv->url,
			 strerror(saved));
		return MER_EIO;
	}
	if (getsockname(fd, (struct sockaddr *)&ss, &sl) == 0) {
		if (ss.ss_family == AF_INET)
			srv->port =
			    ntohs(((struct sockaddr_in *)&ss)->sin_port);
		else if (ss.ss_family == AF_INET6)
			srv->port =
			    ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
	}
	srv->lfd = fd;
	return 0;
}

int mer_http_server_start(struct mer_http_server *srv)
{
	struct epoll_event ev;
	int rv;

	pthread_mutex_lock(&srv->mu);
	rv = srv->state == S_NEW ? 0 : MER_ESTATE;
	if (!rv)
		srv->state = S_STARTED;
	pthread_mutex_unlock(&srv->mu);
	if (rv)
		return rv;

	rv = srv_listen(srv);
	if (rv)
		goto out_fail;
	srv->efd = eventfd(0, EFD_NONBLOCK | EFD_CLOEXEC);
	srv->epfd = epoll_create1(EPOLL_CLOEXEC);
	if (srv->efd < 0 || srv->epfd < 0) {
		rv = MER_EIO;
		goto out_fail;
	}
	memset(&ev, 0, sizeof(ev));
	ev.events = EPOLLIN;
	ev.data.ptr = &srv->listen_tag;
	if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, srv->lfd, &ev) != 0) {
		rv = MER_EIO;
		goto out_fail;
	}
	ev.data.ptr = &srv->wake_tag;
	if (epoll_ctl(srv->epfd, EPOLL_CTL_ADD, srv->efd, &ev) != 0) {
		rv = MER_EIO;
		goto out_fail;
	}
	srv->threads = calloc(srv->nworkers, sizeof(*srv->threads));
	if (!srv->threads) {
		rv = MER_ENOMEM;
		goto out_fail;
	}
	for (unsigned i = 0; i < srv->nworkers; i++) {
		if (pthread_create(&srv->threads[i], NULL, worker_main, srv)) {
			rv = MER_ENOMEM;
			goto out_fail;
		}
		srv->nthreads++;
	}
	if (pthread_create(&srv->io_thread, NULL, io_main, srv)) {
		rv = MER_ENOMEM;
		goto out_fail;
	}
	srv->io_started = true;
	mer_info("http listening", "url=%s port=%d workers=%u", srv->url,
		 srv->port, srv->nworkers);
	return 0;

out_fail:
	workers_stop(srv);
	if (srv->lfd >= 0)
		close(srv->lfd);
	srv->lfd = -1;
	srv->port = 0;
	pthread_mutex_lock(&srv->mu);
	srv->state = S_STOPPED;
	pthread_mutex_unlock(&srv->mu);
	return rv;
}

int mer_http_server_port(const struct mer_http_server *srv)
{
	return srv ? srv->port : 0;
}

void mer_http_server_stop(struct mer_http_server *srv)
{
	struct http_job *list;
	bool was_started;

	if (!srv)
		return;
	pthread_mutex_lock(&srv->mu);
	was_started = srv->state == S_STARTED;
	if (srv->state == S_NEW)
		srv->state = S_STOPPED;
	else if (was_started)
		srv->state = S_STOPPING;
	if (was_started)
		srv->io_quit = true;
	pthread_mutex_unlock(&srv->mu);
	if (!was_started)
		return;
	/* The I/O thread closes the listener and every connection, so no
	 * client waits on a handler; then the workers finish what they run
	 * (requests still queued have lost their clients and are skipped). */
	if (srv->io_started) {
		wake_io(srv);
		pthread_join(srv->io_thread, NULL);
		srv->io_started = false;
	}
	workers_stop(srv);
	pthread_mutex_lock(&srv->mu);
	list = srv->done;
	srv->done = NULL;
	srv->state = S_STOPPED;
	pthread_mutex_unlock(&srv->mu);
	while (list) {
		struct http_job *job = list;

		list = job->next;
		job_observe(job, 499);
		job_free(job);
	}
	mer_info("http stopped", "url=%s port=%d", srv->url, srv->port);
}

void mer_http_server_free(struct mer_http_server *srv)
{
	if (!srv)
		return;
	mer_http_server_stop(srv);
	for (size_t i = 0; i < srv->nroutes; i++)
		route_free(&srv->routes[i]);
	free(srv->routes);
	SSL_CTX_free(srv->tls);
	if (srv->lfd >= 0)
		close(srv->lfd);
	if (srv->efd >= 0)
		close(srv->efd);
	if (srv->epfd >= 0)
		close(srv->epfd);
	free(srv->threads);
	free(srv->url);
	free(srv->host);
	free(srv->port_str);
	pthread_cond_destroy(&srv->work_cv);
	pthread_mutex_destroy(&srv->mu);
	free(srv);
}

void mer_http_server_stats(struct mer_http_server *srv,
			   struct mer_http_stats *out)
{
	pthread_mutex_lock(&srv->mu);
	out->workers = srv->nthreads;
	out->busy = srv->busy;
	out->queued = srv->queued;
	out->connections = srv->nconns;
	pthread_mutex_unlock(&srv->mu);
}
