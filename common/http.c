/*
 * REST serving on nng's HTTP server: one catch-all nng handler, our own
 * route table, asynchronous body reads, a worker pool for handlers and JSON
 * error bodies. Not an HTTP parser: nng parses request lines and headers.
 */
#include "http.h"

#include <ctype.h>
#include <errno.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include <arpa/inet.h>
#include <nng/nng.h>
#include <nng/supplemental/http/http.h>
#include <nng/supplemental/tls/tls.h>
#include <sodium.h>

#include "err.h"
#include "log.h"

#define HTTP_DEFAULT_WORKERS 8u
#define HTTP_DEFAULT_QUEUE 256u
#define HTTP_DEFAULT_MAX_BODY ((size_t)1 << 20)
#define HTTP_DEFAULT_BODY_TIMEOUT_MS 10000u
#define HTTP_MAX_SEGMENTS 32
#define HTTP_MAX_PARAMS 8
#define HTTP_MAX_QUERY 64
#define HTTP_MAX_PEM ((size_t)1 << 20)
#define HTTP_BODY_CHUNK ((size_t)16 << 10)
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

struct mer_http_req {
	struct http_job *job;
	char *method;
	char *path;
	const struct route *route;
	const char *route_label; /* best pattern of a 405, for observe */
	struct kv params[HTTP_MAX_PARAMS];
	size_t nparams;
	struct kv *query;
	size_t nquery;
	struct kv *hdrs; /* headers looked up so far (value NULL: absent) */
	size_t nhdrs;
	size_t hdrcap;
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

enum job_phase { PH_ROUTE, PH_CONTINUE, PH_BODY, PH_QUEUED, PH_RUN };

/*
 * One request. nng's aio (and with it nreq and conn) stays valid until it
 * is finished; aio_done, guarded by srv->mu, says whether it has been —
 * by us with a response, or by job_cancel when nng closes the connection.
 * refs counts the holders: the nng aio until it is finished, an io
 * operation in flight, and the queue/worker.
 */
struct http_job {
	struct mer_http_server *srv;
	nng_aio *aio;
	nng_http_req *nreq;
	nng_http_conn *conn;
	nng_aio *io;
	int refs;
	bool aio_done;
	bool gone;  /* finished without an answer: observed as 499 */
	bool close; /* answer with Connection: close */
	bool early; /* res holds an answer to send after the body */
	enum job_phase phase;
	size_t body_want;   /* Content-Length */
	size_t body_cap;    /* req.body holds body_cap + 1 bytes */
	double deadline_ms; /* for the body, on mono_ms() */
	const char *label;  /* method label for observe */
	struct timespec t0;
	struct http_job *next;
	struct mer_http_req req;
	struct mer_http_res res;
};

enum srv_state { S_NEW, S_STARTED, S_STOPPING, S_STOPPED };

/*
 * What nng's handler points at, instead of the server itself. nng 1.5.2
 * can lose a reference to a handler when a connection is closed just as
 * its request arrives (http_sconn_rxdone takes the reference, then
 * nng_aio_begin fails on the closed aio and nothing drops it), so the
 * handler's destructor may never run. The server therefore never waits
 * for it: mer_http_server_free() only cuts anchor->srv, and the anchor is
 * freed by the destructor if and when nng runs it. Anchors not yet
 * released stay on a list, so such a lost handler is still reachable
 * (and visible in a debugger) rather than a silent leak.
 */
struct http_anchor {
	struct http_anchor *next;
	struct http_anchor **pprev;
	nng_http_handler *h;
	struct mer_http_server *srv; /* NULL once the server is going away */
};

static pthread_mutex_t anchor_mu = PTHREAD_MUTEX_INITIALIZER;
static struct http_anchor *anchors;

struct mer_http_server {
	char *url;
	unsigned nworkers;
	unsigned max_queue;
	size_t max_body;
	size_t max_depth;
	unsigned body_timeout_ms;
	void *arg;
	mer_http_observe_fn observe;
	void *observe_arg;

	struct route *routes;
	size_t nroutes;

	nng_tls_config *tls;
	nng_http_server *nsrv;
	nng_http_handler *nh;
	int port;

	pthread_mutex_t mu;
	pthread_cond_t work_cv; /* a job was queued, or quit */
	pthread_cond_t idle_cv; /* a job was freed, or nng let go of nh */
	enum srv_state state;
	bool quit;
	struct http_anchor *anchor; /* guarded by anchor_mu */
	unsigned live_jobs;
	unsigned queued;
	unsigned busy;
	struct http_job *qhead;
	struct http_job *qtail;
	pthread_t *threads;
	unsigned nthreads;
};

static const char continue_line[] = "HTTP/1.1 100 Continue\r\n\r\n";

static const struct {
	uint16_t status;
	const char *body;
} nng_pages[] = {
    {400, "{\"error\":\"invalid_request\","
	  "\"message\":\"malformed HTTP request\"}"},
    {404, "{\"error\":\"not_found\",\"message\":\"no such resource\"}"},
    {500, "{\"error\":\"internal\",\"message\":\"internal error\"}"},
    {505, "{\"error\":\"http_version\","
	  "\"message\":\"only HTTP/1.x is supported\"}"},
};

/* ---- small helpers ---------------------------------------------------- */

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

static double elapsed_s(const struct timespec *t0)
{
	struct timespec now;

	clock_gettime(CLOCK_MONOTONIC, &now);
	return (double)(now.tv_sec - t0->tv_sec) +
	       (double)(now.tv_nsec - t0->tv_nsec) / 1e9;
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

static int from_nng(int rv)
{
	switch (rv) {
	case 0:
		return 0;
	case NNG_ENOMEM:
		return MER_ENOMEM;
	case NNG_EINVAL:
	case NNG_EADDRINVAL:
		return MER_EINVAL;
	case NNG_EBUSY:
		return MER_ESTATE;
	case NNG_ETIMEDOUT:
		return MER_ETIMEDOUT;
	case NNG_ECLOSED:
		return MER_ECLOSED;
	case NNG_ENOTSUP:
		return MER_EUNSUPPORTED;
	default:
		return MER_EIO;
	}
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

int mer_http_res_text(struct mer_http_res *res, int status,
		      const char *content_type, const char *data, size_t len)
{
	char *copy = dup_n(data ? data : "", data ? len : 0);

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

/*
 * nng has no way to list a request's headers, so they are looked up on
 * demand. The nng request lives until its aio is finished; srv->mu and
 * aio_done make sure we never read it after that (the client may be gone
 * while the handler runs).
 */
const char *mer_http_req_header(struct mer_http_req *req, const char *name)
{
	struct http_job *job = req->job;
	struct mer_http_server *srv = job->srv;
	const char *v = NULL;
	char *copy = NULL, *ncopy;
	bool gone;
	struct kv *h;

	if (!name)
		return NULL;
	for (size_t i = 0; i < req->nhdrs; i++)
		if (strcasecmp(req->hdrs[i].name, name) == 0)
			return req->hdrs[i].value;
	pthread_mutex_lock(&srv->mu);
	gone = job->aio_done;
	if (!gone) {
		v = nng_http_req_get_header(job->nreq, name);
		if (v)
			copy = dup_s(v);
	}
	pthread_mutex_unlock(&srv->mu);
	if (gone || (v && !copy))
		return NULL;
	if (req->nhdrs == req->hdrcap) {
		size_t cap = req->hdrcap ? req->hdrcap * 2 : 8;

		h = realloc(req->hdrs, cap * sizeof(*h));
		if (!h) {
			free(copy);
			return NULL;
		}
		req->hdrs = h;
		req->hdrcap = cap;
	}
	ncopy = dup_s(name);
	if (!ncopy) {
		free(copy);
		return NULL;
	}
	req->hdrs[req->nhdrs].name = ncopy;
	req->hdrs[req->nhdrs].value = copy;
	req->nhdrs++;
	return copy;
}

static void req_free(struct mer_http_req *req)
{
	free(req->method);
	free(req->path);
	for (size_t i = 0; i < req->nparams; i++) {
		free(req->params[i].name);
		free(req->params[i].value);
	}
	for (size_t i = 0; i < req->nquery; i++) {
		free(req->query[i].name);
		free(req->query[i].value);
	}
	free(req->query);
	for (size_t i = 0; i < req->nhdrs; i++) {
		free(req->hdrs[i].name);
		free(req->hdrs[i].value);
	}
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

/* ---- jobs ------------------------------------------------------------- */

static void job_observe(struct http_job *job, int status);

static void job_free(struct http_job *job)
{
	struct mer_http_server *srv = job->srv;

	/* Reported here, once every thread is done with the job: job_cancel
	 * may run while job_begin is still filling in the request. */
	if (job->gone)
		job_observe(job, 499);
	req_free(&job->req);
	res_reset(&job->res);
	/* Reaped, not freed: the last reference may be dropped inside the io
	 * aio's own callback, where nng_aio_free would wait for itself. */
	if (job->io)
		nng_aio_reap(job->io);
	free(job);
	pthread_mutex_lock(&srv->mu);
	if (--srv->live_jobs == 0)
		pthread_cond_broadcast(&srv->idle_cv);
	pthread_mutex_unlock(&srv->mu);
}

static void job_put(struct http_job *job)
{
	struct mer_http_server *srv = job->srv;
	bool last;

	pthread_mutex_lock(&srv->mu);
	last = --job->refs == 0;
	pthread_mutex_unlock(&srv->mu);
	if (last)
		job_free(job);
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

/* Called by nng (with its server lock held) when it closes the connection
 * or cancels the request: nobody will read our answer. */
static void job_cancel(nng_aio *aio, void *arg, int rv)
{
	struct http_job *job = arg;
	struct mer_http_server *srv = job->srv;
	nng_aio *io = NULL;
	bool fire = false;

	pthread_mutex_lock(&srv->mu);
	if (!job->aio_done) {
		job->aio_done = true;
		job->gone = true;
		nng_aio_finish(aio, rv);
		io = job->io;
		fire = true;
	}
	pthread_mutex_unlock(&srv->mu);
	if (!fire)
		return;
	if (io)
		nng_aio_cancel(io);
	job_put(job);
}

/* Finishes nng's aio with an error: nng closes the connection without an
 * answer. */
static void job_abort(struct http_job *job, int nng_rv)
{
	struct mer_http_server *srv = job->srv;
	bool fire = false;

	pthread_mutex_lock(&srv->mu);
	if (!job->aio_done) {
		job->aio_done = true;
		job->gone = true;
		nng_aio_finish(job->aio, nng_rv);
		fire = true;
	}
	pthread_mutex_unlock(&srv->mu);
	if (fire)
		job_put(job);
}

static int res_to_nng(struct http_job *job, nng_http_res **out, int *statusp)
{
	struct mer_http_res *res = &job->res;
	nng_http_res *n = NULL;
	int status, rv;

	if (res->oom)
		res_errorf(res, 500, "internal", "out of memory");
	/* A handler that set nothing answers 204. */
	status = res->status ? res->status : 204;
	if (status < 100 || status > 599)
		status = 500;
	rv = nng_http_res_alloc(&n);
	if (rv)
		return rv;
	rv = nng_http_res_set_status(n, (uint16_t)status);
	if (!rv && res->body)
		rv = nng_http_res_set_header(n, "Content-Type", res->ctype);
	/* Always set the length, so keep-alive clients know where the answer
	 * ends. nng cannot copy 0 bytes (it reports ENOMEM), so an empty body
	 * is set by reference, which writes Content-Length: 0; 204 and 304
	 * must carry no length at all (RFC 9110). */
	if (!rv && res->len)
		rv = nng_http_res_copy_data(n, res->body, res->len);
	else if (!rv)
		rv = nng_http_res_set_data(n, NULL, 0);
	if (!rv && (status == 204 || status == 304))
		(void)nng_http_res_del_header(n, "Content-Length");
	for (size_t i = 0; !rv && i < res->nhdrs; i++)
		rv = nng_http_res_add_header(n, res->hdrs[i].name,
					     res->hdrs[i].value);
	if (!rv && job->close)
		rv = nng_http_res_set_header(n, "Connection", "close");
	if (rv) {
		nng_http_res_free(n);
		return rv;
	}
	*out = n;
	*statusp = status;
	return 0;
}

/* Hands job->res to nng as the answer. */
static void job_send(struct http_job *job)
{
	struct mer_http_server *srv = job->srv;
	nng_http_res *n = NULL;
	int status = 0, rv;
	bool sent = false;

	rv = res_to_nng(job, &n, &status);
	if (rv) {
		job_abort(job, rv);
		return;
	}
	pthread_mutex_lock(&srv->mu);
	if (!job->aio_done) {
		job->aio_done = true;
		nng_aio_set_output(job->aio, 0, n);
		nng_aio_finish(job->aio, 0);
		sent = true;
	}
	pthread_mutex_unlock(&srv->mu);
	if (!sent) {
		nng_http_res_free(n);
		return;
	}
	job_observe(job, status);
	job_put(job);
}

static void job_fail(struct http_job *job, int status, const char *code,
		     const char *msg)
{
	res_errorf(&job->res, status, code, "%s", msg);
	if (status == 503 && strcmp(code, "busy") == 0)
		mer_http_res_header(&job->res, "Retry-After", "1");
	job_send(job);
}

static void job_enqueue(struct http_job *job)
{
	struct mer_http_server *srv = job->srv;
	const char *code = NULL;

	pthread_mutex_lock(&srv->mu);
	if (job->aio_done) {
		pthread_mutex_unlock(&srv->mu);
		return;
	}
	if (srv->quit || srv->state != S_STARTED) {
		code = "unavailable";
	} else if (srv->queued >= srv->max_queue) {
		code = "busy";
	} else {
		job->refs++;
		job->phase = PH_QUEUED;
		job->next = NULL;
		if (srv->qtail)
			srv->qtail->next = job;
		else
			srv->qhead = job;
		srv->qtail = job;
		srv->queued++;
		pthread_cond_signal(&srv->work_cv);
	}
	pthread_mutex_unlock(&srv->mu);
	if (code)
		job_fail(job, 503, code,
			 strcmp(code, "busy") == 0
			     ? "all workers are busy, try again"
			     : "the server is stopping");
}

/* Starts the next io step (100 Continue, then the body) on nng's
 * connection. Only while nng's aio is unfinished is conn alive. */
static double mono_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
}

/*
 * Makes room for more of the body. The buffer grows with what arrives
 * rather than being sized by Content-Length up front, so a client that
 * announces a large body and sends nothing costs (almost) nothing.
 */
static int body_grow(struct http_job *job)
{
	struct mer_http_req *req = &job->req;
	size_t cap;
	char *p;

	if (req->body_len < job->body_cap)
		return 0;
	cap = job->body_cap ? job->body_cap * 2 : HTTP_BODY_CHUNK;
	if (cap > job->body_want)
		cap = job->body_want;
	p = realloc(req->body, cap + 1);
	if (!p)
		return MER_ENOMEM;
	req->body = p;
	job->body_cap = cap;
	return 0;
}

/*
 * Starts the next io step on nng's connection: 100 Continue, then reads of
 * the body until all of it is here or the deadline passes. conn is alive
 * only while nng's aio is unfinished, hence the check under the lock.
 */
static void job_io_start(struct http_job *job)
{
	struct mer_http_server *srv = job->srv;
	struct mer_http_req *req = &job->req;
	double left = job->deadline_ms - mono_ms();
	nng_iov iov;

	if (left < 1) {
		job->close = true;
		job_fail(job, 408, "timeout",
			 "the request body did not arrive in time");
		return;
	}
	if (job->phase == PH_CONTINUE) {
		iov.iov_buf = (void *)continue_line;
		iov.iov_len = sizeof(continue_line) - 1;
	} else {
		if (body_grow(job) != 0) {
			job->close = true;
			job_fail(job, 500, "internal", "out of memory");
			return;
		}
		iov.iov_buf = req->body + req->body_len;
		iov.iov_len = job->body_cap - req->body_len;
	}
	nng_aio_set_iov(job->io, 1, &iov);
	nng_aio_set_timeout(job->io, (nng_duration)left);
	pthread_mutex_lock(&srv->mu);
	if (!job->aio_done) {
		job->refs++;
		if (job->phase == PH_CONTINUE)
			nng_http_conn_write_all(job->conn, job->io);
		else
			nng_http_conn_read(job->conn, job->io);
	}
	pthread_mutex_unlock(&srv->mu);
}

static void job_io_done(void *arg)
{
	struct http_job *job = arg;
	struct mer_http_server *srv = job->srv;
	struct mer_http_req *req = &job->req;
	int rv = nng_aio_result(job->io);
	bool done;

	pthread_mutex_lock(&srv->mu);
	done = job->aio_done;
	pthread_mutex_unlock(&srv->mu);
	if (done) {
		/* nng gave up on the request; nothing to answer. */
	} else if (rv == NNG_ETIMEDOUT) {
		job->close = true;
		job_fail(job, 408, "timeout",
			 "the request body did not arrive in time");
	} else if (rv != 0) {
		job_abort(job, rv);
	} else if (job->phase == PH_CONTINUE) {
		job->phase = PH_BODY;
		job_io_start(job);
	} else if ((req->body_len += nng_aio_count(job->io)) < job->body_want) {
		job_io_start(job);
	} else {
		req->body[req->body_len] = '\0';
		if (job->early)
			job_send(job);
		else
			job_enqueue(job);
	}
	job_put(job);
}

/* Parses the number in Content-Length: digits only, no sign. */
static int parse_length(const char *s, uint64_t *out)
{
	char *end;
	unsigned long long v;

	while (*s == ' ' || *s == '\t')
		s++;
	if (!isdigit((unsigned char)*s))
		return MER_EINVAL;
	errno = 0;
	v = strtoull(s, &end, 10);
	if (errno)
		return MER_EINVAL;
	while (*end == ' ' || *end == '\t')
		end++;
	if (*end)
		return MER_EINVAL;
	*out = v;
	return 0;
}

/*
 * Everything that can be decided without a worker, on nng's thread:
 * parse the target, route, check the body's framing and size, then start
 * reading the body or queue the job.
 */
static void job_begin(struct http_job *job)
{
	struct mer_http_server *srv = job->srv;
	struct mer_http_req *req = &job->req;
	struct seg_ref segs[HTTP_MAX_SEGMENTS];
	size_t nsegs = 0;
	const char *uri = nng_http_req_get_uri(job->nreq);
	const char *m = nng_http_req_get_method(job->nreq);
	const char *te, *cl, *expect, *p, *q;
	char allow[256];
	nng_aio *io = NULL;
	uint64_t len = 0;
	bool stopping, too_deep = false;
	int rv;

	req->job = job;
	job->label = method_label(m);
	req->method = dup_s(m ? m : "");
	if (!req->method)
		goto out_nomem;
	pthread_mutex_lock(&srv->mu);
	stopping = srv->state != S_STARTED;
	pthread_mutex_unlock(&srv->mu);
	if (stopping) {
		job->close = true;
		job_fail(job, 503, "unavailable", "the server is stopping");
		return;
	}

	te = nng_http_req_get_header(job->nreq, "Transfer-Encoding");
	cl = nng_http_req_get_header(job->nreq, "Content-Length");
	if (cl && parse_length(cl, &len) != 0) {
		job->close = true;
		job_fail(job, 400, "invalid_request", "bad Content-Length");
		return;
	}
	if (te || len > 0)
		job->close = true; /* until the body is read */

	/* Absolute form (GET http://host/path): drop scheme and authority. */
	if (!uri)
		uri = "";
	if (strncasecmp(uri, "http://", 7) == 0 ||
	    strncasecmp(uri, "https://", 8) == 0) {
		const char *slash = strchr(strstr(uri, "://") + 3, '/');

		uri = slash ? slash : "/";
	}
	q = strpbrk(uri, "?#");
	req->path = dup_n(uri, q ? (size_t)(q - uri) : strlen(uri));
	if (!req->path)
		goto out_nomem;
	if (q && *q == '?') {
		const char *hash = strchr(q + 1, '#');
		char *qs =
		    dup_n(q + 1, hash ? (size_t)(hash - q - 1) : strlen(q + 1));

		if (!qs)
			goto out_nomem;
		rv = parse_query(req, qs);
		free(qs);
		if (rv == MER_ENOMEM)
			goto out_nomem;
		if (rv) {
			job_fail(job, 400, "invalid_request",
				 rv == MER_ETOOBIG
				     ? "too many query parameters"
				     : "bad percent-encoding in the query");
			return;
		}
	}
	if (req->path[0] != '/') {
		job_fail(job, 400, "invalid_request",
			 "the request target must be a path");
		return;
	}
	p = req->path;
	if (strcmp(p, "/") != 0) {
		while (*p == '/' && !too_deep) {
			const char *s = p + 1, *e = strchr(s, '/');

			/* Deeper than any pattern can be: no route. */
			too_deep = nsegs == HTTP_MAX_SEGMENTS;
			if (too_deep)
				break;
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
			goto out_nomem;
		res_errorf(&job->res, 400, "invalid_request",
			   "bad percent-encoding in the path");
		job->early = true;
	}

	if (te) {
		job_fail(job, 411, "length_required",
			 "request bodies need a Content-Length "
			 "(chunked uploads are not supported)");
		return;
	}
	if (len > srv->max_body) {
		job_fail(job, 413, "too_large",
			 "the request body is over the size limit");
		return;
	}
	expect = nng_http_req_get_header(job->nreq, "Expect");
	if (len == 0 || (job->early && expect)) {
		/* Nothing to read (or a client waiting for 100 that we tell
		 * no at once: it will not send the body, the connection is
		 * closed after the answer). */
		if (job->early)
			job_send(job);
		else
			job_enqueue(job);
		return;
	}
	if (expect && strcasecmp(expect, "100-continue") != 0) {
		job_fail(job, 417, "expectation_failed",
			 "only Expect: 100-continue is supported");
		return;
	}
	job->body_want = (size_t)len;
	if (nng_aio_alloc(&io, job_io_done, job) != 0)
		goto out_nomem;
	pthread_mutex_lock(&srv->mu);
	job->io = io; /* job_cancel reads it */
	pthread_mutex_unlock(&srv->mu);
	/* One deadline for all of the body (and the 100 Continue before). */
	job->deadline_ms = mono_ms() + srv->body_timeout_ms;
	job->close = false;
	job->phase = expect ? PH_CONTINUE : PH_BODY;
	job_io_start(job);
	return;

out_nomem:
	job->close = true;
	job_fail(job, 500, "internal", "out of memory");
}

/* nng's handler callback, on an nng thread. nng has already called
 * nng_aio_begin on our behalf. */
static void http_on_request(nng_aio *aio)
{
	nng_http_req *nreq = nng_aio_get_input(aio, 0);
	nng_http_handler *h = nng_aio_get_input(aio, 1);
	nng_http_conn *conn = nng_aio_get_input(aio, 2);
	struct http_anchor *a = nng_http_handler_get_data(h);
	struct mer_http_server *srv;
	struct http_job *job = calloc(1, sizeof(*job));

	if (!job) {
		nng_aio_finish(aio, NNG_ENOMEM);
		return;
	}
	/* Counting the job under anchor_mu makes it visible to
	 * mer_http_server_free() before that can cut the anchor. */
	pthread_mutex_lock(&anchor_mu);
	srv = a->srv;
	if (srv) {
		pthread_mutex_lock(&srv->mu);
		srv->live_jobs++;
		pthread_mutex_unlock(&srv->mu);
	}
	pthread_mutex_unlock(&anchor_mu);
	if (!srv) {
		free(job);
		nng_aio_finish(aio, NNG_ECLOSED);
		return;
	}
	job->srv = srv;
	job->aio = aio;
	job->nreq = nreq;
	job->conn = conn;
	/* One reference for nng's aio until it is finished, one for us while
	 * job_begin runs: job_cancel may finish the aio meanwhile. */
	job->refs = 2;
	job->phase = PH_ROUTE;
	clock_gettime(CLOCK_MONOTONIC, &job->t0);
	nng_aio_defer(aio, job_cancel, job);
	job_begin(job);
	job_put(job);
}

/* ---- workers ---------------------------------------------------------- */

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
	job_send(job);
}

static void *worker_main(void *arg)
{
	struct mer_http_server *srv = arg;

	pthread_mutex_lock(&srv->mu);
	for (;;) {
		struct http_job *job;
		bool skip, stopping;

		while (!srv->qhead && !srv->quit)
			pthread_cond_wait(&srv->work_cv, &srv->mu);
		job = srv->qhead;
		if (!job)
			break; /* quit and drained */
		srv->qhead = job->next;
		if (!srv->qhead)
			srv->qtail = NULL;
		srv->queued--;
		skip = job->aio_done;
		stopping = srv->quit;
		job->phase = PH_RUN;
		if (!skip && !stopping)
			srv->busy++;
		pthread_mutex_unlock(&srv->mu);
		if (!skip && stopping)
			job_fail(job, 503, "unavailable",
				 "the server is stopping");
		else if (!skip)
			job_run(job);
		job_put(job);
		pthread_mutex_lock(&srv->mu);
		if (!skip && !stopping)
			srv->busy--;
	}
	pthread_mutex_unlock(&srv->mu);
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

static int tls_load(struct mer_http_server *srv, const char *cert_file,
		    const char *key_file, char *err, size_t errlen)
{
	char *cert = NULL, *key = NULL;
	size_t cert_cap = 0, key_cap = 0;
	int rv;

	rv = read_pem(cert_file, &cert, &cert_cap, err, errlen);
	if (rv)
		return rv;
	rv = read_pem(key_file, &key, &key_cap, err, errlen);
	if (rv)
		goto out_cert;
	rv = nng_tls_config_alloc(&srv->tls, NNG_TLS_MODE_SERVER);
	if (rv) {
		set_err(err, errlen, "tls: %s", nng_strerror(rv));
		rv = from_nng(rv);
		goto out_key;
	}
	rv = nng_tls_config_own_cert(srv->tls, cert, key, NULL);
	if (rv) {
		set_err(err, errlen,
			"%s, %s: cannot use certificate and key: %s", cert_file,
			key_file, nng_strerror(rv));
		rv = rv == NNG_ENOMEM ? MER_ENOMEM : MER_EIO;
	}
out_key:
	sodium_memzero(key, key_cap);
	free(key);
out_cert:
	free(cert);
	return rv;
}

/* The handler's destructor: nng is done with it. */
static void http_handler_gone(void *arg)
{
	struct http_anchor *a = arg;

	pthread_mutex_lock(&anchor_mu);
	if (a->srv)
		a->srv->anchor = NULL;
	*a->pprev = a->next;
	if (a->next)
		a->next->pprev = a->pprev;
	pthread_mutex_unlock(&anchor_mu);
	free(a);
}

/* Creates the anchor for srv and nh and lists it. */
static int anchor_new(struct mer_http_server *srv, nng_http_handler *nh,
		      struct http_anchor **out)
{
	struct http_anchor *a = calloc(1, sizeof(*a));

	if (!a)
		return MER_ENOMEM;
	a->h = nh;
	a->srv = srv;
	pthread_mutex_lock(&anchor_mu);
	a->next = anchors;
	if (anchors)
		anchors->pprev = &a->next;
	a->pprev = &anchors;
	anchors = a;
	srv->anchor = a;
	pthread_mutex_unlock(&anchor_mu);
	*out = a;
	return 0;
}

int mer_http_server_new(const struct mer_http_config *cfg,
			struct mer_http_server **out, char *err, size_t errlen)
{
	struct mer_http_server *srv;
	nng_url *u = NULL;
	bool https;
	int rv;

	*out = NULL;
	set_err(err, errlen, "%s", "");
	if (!cfg || !cfg->url) {
		set_err(err, errlen, "no URL");
		return MER_EINVAL;
	}
	rv = nng_url_parse(&u, cfg->url);
	if (rv ||
	    (strcmp(u->u_scheme, "http") != 0 &&
	     strcmp(u->u_scheme, "https") != 0) ||
	    !u->u_hostname) {
		set_err(err, errlen, "%s: not an http:// or https:// URL",
			cfg->url);
		nng_url_free(u);
		return MER_EINVAL;
	}
	https = strcmp(u->u_scheme, "https") == 0;
	nng_url_free(u);
	if (https != (cfg->tls_cert_file != NULL) ||
	    https != (cfg->tls_key_file != NULL)) {
		set_err(err, errlen, "%s: %s", cfg->url,
			https ? "https:// needs a certificate and a key file"
			      : "a certificate and key need an https:// URL");
		return MER_EINVAL;
	}

	srv = calloc(1, sizeof(*srv));
	if (!srv)
		return MER_ENOMEM;
	pthread_mutex_init(&srv->mu, NULL);
	pthread_cond_init(&srv->work_cv, NULL);
	pthread_cond_init(&srv->idle_cv, NULL);
	srv->state = S_NEW;
	srv->url = dup_s(cfg->url);
	srv->nworkers = cfg->workers ? cfg->workers : HTTP_DEFAULT_WORKERS;
	srv->max_queue = cfg->max_queue ? cfg->max_queue : HTTP_DEFAULT_QUEUE;
	srv->max_body = cfg->max_body ? cfg->max_body : HTTP_DEFAULT_MAX_BODY;
	srv->max_depth =
	    cfg->max_json_depth ? cfg->max_json_depth : MER_JSON_MAX_DEPTH;
	srv->body_timeout_ms = cfg->body_timeout_ms
				   ? cfg->body_timeout_ms
				   : HTTP_DEFAULT_BODY_TIMEOUT_MS;
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

int mer_http_server_start(struct mer_http_server *srv)
{
	struct http_anchor *anchor = NULL;
	nng_url *u = NULL;
	nng_sockaddr sa;
	int rv;

	pthread_mutex_lock(&srv->mu);
	rv = srv->state == S_NEW ? 0 : MER_ESTATE;
	if (!rv)
		srv->state = S_STARTED;
	pthread_mutex_unlock(&srv->mu);
	if (rv)
		return rv;

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

	rv = nng_url_parse(&u, srv->url);
	if (rv == 0)
		rv = nng_http_server_hold(&srv->nsrv, u);
	nng_url_free(u);
	if (rv) {
		srv->nsrv = NULL;
		rv = from_nng(rv);
		goto out_fail;
	}
	if (srv->tls) {
		rv = nng_http_server_set_tls(srv->nsrv, srv->tls);
		if (rv) {
			rv = from_nng(rv);
			goto out_fail;
		}
	}
	/* One catch-all handler: nng's own routing answers 404/405 with HTML
	 * and has no path parameters, so all routing is ours. */
	rv = nng_http_handler_alloc(&srv->nh, "/", http_on_request);
	if (rv) {
		srv->nh = NULL;
		rv = from_nng(rv);
		goto out_fail;
	}
	if ((rv = nng_http_handler_set_method(srv->nh, NULL)) != 0 ||
	    (rv = nng_http_handler_set_tree(srv->nh)) != 0 ||
	    (rv = nng_http_handler_collect_body(srv->nh, false, 0)) != 0) {
		nng_http_handler_free(srv->nh);
		srv->nh = NULL;
		rv = from_nng(rv);
		goto out_fail;
	}
	rv = anchor_new(srv, srv->nh, &anchor);
	if (rv) {
		nng_http_handler_free(srv->nh);
		srv->nh = NULL;
		goto out_fail;
	}
	/* From here on the handler's destructor frees the anchor. */
	rv = nng_http_handler_set_data(srv->nh, anchor, http_handler_gone);
	if (rv) {
		http_handler_gone(anchor);
		nng_http_handler_free(srv->nh);
		srv->nh = NULL;
		rv = from_nng(rv);
		goto out_fail;
	}
	rv = nng_http_server_add_handler(srv->nsrv, srv->nh);
	if (rv) {
		nng_http_handler_free(srv->nh); /* runs http_handler_gone */
		srv->nh = NULL;
		rv = rv == NNG_EADDRINUSE ? MER_EEXIST : from_nng(rv);
		goto out_fail;
	}
	/* What nng still answers itself (no Host header, a target that is not
	 * a path, HTTP/2) gets a JSON body too; nng insists on labelling it
	 * text/html. */
	for (size_t i = 0; i < sizeof(nng_pages) / sizeof(nng_pages[0]); i++)
		(void)nng_http_server_set_error_page(
		    srv->nsrv, nng_pages[i].status, nng_pages[i].body);
	rv = nng_http_server_start(srv->nsrv);
	if (rv) {
		mer_warn("http listen failed", "url=%s err=%s", srv->url,
			 nng_strerror(rv));
		rv = rv == NNG_ENOMEM ? MER_ENOMEM : MER_EIO;
		goto out_fail;
	}
	memset(&sa, 0, sizeof(sa));
	if (nng_http_server_get_addr(srv->nsrv, &sa) == 0) {
		if (sa.s_family == NNG_AF_INET)
			srv->port = ntohs(sa.s_in.sa_port);
		else if (sa.s_family == NNG_AF_INET6)
			srv->port = ntohs(sa.s_in6.sa_port);
	}
	mer_info("http listening", "url=%s port=%d workers=%u", srv->url,
		 srv->port, srv->nworkers);
	return 0;

out_fail:
	workers_stop(srv);
	if (srv->nsrv) {
		nng_http_server_release(srv->nsrv);
		srv->nsrv = NULL;
	}
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
	bool was_started;

	if (!srv)
		return;
	pthread_mutex_lock(&srv->mu);
	was_started = srv->state == S_STARTED;
	if (srv->state == S_NEW)
		srv->state = S_STOPPED;
	else if (was_started)
		srv->state = S_STOPPING;
	pthread_mutex_unlock(&srv->mu);
	if (!was_started)
		return;
	/* Closes the listener and every connection; nng cancels requests in
	 * flight through job_cancel, so nothing waits on a client. */
	nng_http_server_stop(srv->nsrv);
	workers_stop(srv);
	pthread_mutex_lock(&srv->mu);
	srv->state = S_STOPPED;
	pthread_mutex_unlock(&srv->mu);
	mer_info("http stopped", "url=%s port=%d", srv->url, srv->port);
}

void mer_http_server_free(struct mer_http_server *srv)
{
	if (!srv)
		return;
	mer_http_server_stop(srv);
	if (srv->nsrv)
		nng_http_server_release(srv->nsrv);
	/* nng frees its server and our handler later, on its reaper thread
	 * (or, see struct http_anchor, never); from now on a late callback
	 * finds no server. Jobs already counted may still hold io aios. */
	pthread_mutex_lock(&anchor_mu);
	if (srv->anchor)
		srv->anchor->srv = NULL;
	srv->anchor = NULL;
	pthread_mutex_unlock(&anchor_mu);
	pthread_mutex_lock(&srv->mu);
	while (srv->live_jobs)
		pthread_cond_wait(&srv->idle_cv, &srv->mu);
	pthread_mutex_unlock(&srv->mu);
	for (size_t i = 0; i < srv->nroutes; i++)
		route_free(&srv->routes[i]);
	free(srv->routes);
	if (srv->tls)
		nng_tls_config_free(srv->tls);
	free(srv->threads);
	free(srv->url);
	pthread_cond_destroy(&srv->idle_cv);
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
	pthread_mutex_unlock(&srv->mu);
}
