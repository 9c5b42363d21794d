/*
 * A small REST server on nng's HTTP server: a route table with path
 * parameters, handlers run on a worker pool this module owns, JSON request
 * and response helpers, JSON error bodies, request limits and a per-request
 * hook for metrics. It knows nothing about jobs or sites; the broker
 * registers its routes.
 *
 * Life cycle: mer_http_server_new() -> mer_http_server_add_route()... ->
 * mer_http_server_start() -> mer_http_server_port() -> ... ->
 * mer_http_server_stop() -> mer_http_server_free().
 *
 * Threads. nng parses each request on its own threads; this module matches
 * the route there (cheap), answers 404/405/411/413/503 at once, reads the
 * body asynchronously (never on a worker, so a slow upload holds no worker),
 * and then queues the request for one of its worker threads, which parses
 * the JSON body and calls the handler. Handlers may therefore block (talk to
 * etcd, sleep); a slow handler holds one worker, never an nng thread. When
 * every worker is busy requests wait in a queue of max_queue entries; past
 * that the server answers 503 {"error":"busy"} with Retry-After: 1.
 *
 * Errors. Every error this module sends is JSON:
 *   {"error": "<code>", "message": "<text>"[, "field": "<path>"]}
 * with Content-Type application/json. Codes sent by the module itself:
 *   404 not_found            no route has this path
 *   405 method_not_allowed   a route has this path, not this method (with an
 *                            Allow header listing the methods)
 *   400 invalid_request      bad percent-encoding in the path or query, NUL
 *                            bytes, too many query parameters, bad
 *                            Content-Length
 *   400 invalid_json         the body of a JSON route is not JSON, or is
 *                            nested deeper than max_json_depth; the message
 *                            is "request body:LINE:COLUMN: what is wrong"
 *   400 body_required        a MER_HTTP_JSON_BODY route got no body
 *   411 length_required      a body without Content-Length (chunked upload)
 *   413 too_large            Content-Length over max_body (the body is not
 *                            read; the connection is closed after the answer)
 *   408 timeout              the body did not arrive within body_timeout_ms
 *                            (nng may already have closed the connection, in
 *                            which case the client sees only the close)
 *   417 expectation_failed   an Expect header other than 100-continue
 *   503 busy / unavailable   queue full / server stopping
 *   500 internal             out of memory and the like
 * A handler that returns a mer_err code (err.h) without having set an error
 * response gets mer_http_status_for_err(code) with
 * {"error": mer_errname(code), "message": mer_strerror(code)}.
 *
 * Limits, and what nng 1.5.2 does and does not enforce (read from its
 * http_server.c / http_conn.c / http_msg.c):
 *  - Body: this module reads bodies itself (nng's own collection answers an
 *    HTML 400 for over-limit bodies): Content-Length is checked against
 *    max_body before anything is read; the buffer grows as bytes arrive
 *    (16 KiB, doubling, never past Content-Length), so announcing a big
 *    body and sending nothing costs nothing; body_timeout_ms bounds the
 *    whole body. Expect: 100-continue is answered (curl waits 1 s for it
 *    otherwise). A JSON route holds the body and its parsed copy, about
 *    2 x max_body, while its handler runs.
 *    Transfer-Encoding (chunked) request bodies are refused with 411, since
 *    nng would otherwise treat the chunks as the next request.
 *  - Headers: nng reads a request's line and headers into one 8 KiB
 *    buffer per connection and closes the connection, without an answer,
 *    when they do not fit (measured: 7.8 KiB of headers pass, 8.8 KiB are
 *    refused, however slowly they are sent). No 431 is sent, and the limit
 *    is fixed in nng (HTTP_BUFSIZE); this module only sees a request once
 *    nng has parsed all of it, so it cannot lower or report it.
 *  - Time and connections: nng 1.5.2 has no timeout for reading a request's
 *    line and headers, none for idle keep-alive connections, and no cap on
 *    the number of connections; its public API gives no access to the
 *    server's listener or to a connection before a whole request has
 *    arrived, so this module cannot add them. A client that opens
 *    connections and sends nothing (or half a header) costs one file
 *    descriptor and ~8 KiB each but holds no thread (nng is asynchronous),
 *    so other requests are not stalled until the process runs out of
 *    descriptors. Servers facing untrusted networks should sit behind a
 *    proxy with header timeouts and connection limits.
 *  - nng still answers a few malformed requests itself (no Host header in
 *    HTTP/1.1: 400; a target that is not a path, such as "*": 404; HTTP/2 or
 *    0.9: 505). Their bodies are this module's JSON errors, but nng labels
 *    them Content-Type text/html and this cannot be changed.
 *  - Handlers cannot be interrupted: a handler that never returns holds a
 *    worker for ever, and mer_http_server_stop() waits for it.
 *  - nng 1.5.2 can lose its reference to a handler when a connection is
 *    closed just as its request arrives (seen when stopping under load), so
 *    it never frees that handler. mer_http_server_free() therefore does not
 *    wait for nng to let go of it; such a handler (a few hundred bytes)
 *    stays allocated, on a list in http.c, until the process exits.
 *  - Paths: matched on the raw (still percent-encoded) path, so an encoded
 *    '/' (%2F) or ':' (%3A) stays inside one segment or parameter; parameter
 *    values are decoded afterwards. HEAD is served by the GET route (nng
 *    drops the body).
 */
#ifndef MERIDIAN_HTTP_H
#define MERIDIAN_HTTP_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "json.h"

struct mer_http_server;
/* A request as a handler sees it. Valid only during the handler call. */
struct mer_http_req;
/* The response a handler fills. */
struct mer_http_res;

/*
 * A route handler. Runs on a worker thread and may block. route_arg is the
 * route's arg. Returns 0 when it has filled res (a handler that sets
 * nothing answers 204 No Content), or a mer_err code: then, unless the
 * handler set an error body with mer_http_res_error()/mer_http_res_fail(),
 * the answer is the standard error for that code (see above). Whatever the
 * handler set is discarded when it returns a code and set no error.
 */
typedef int (*mer_http_handler_fn)(struct mer_http_req *req,
				   struct mer_http_res *res, void *route_arg);

/* Route flags. */
enum {
	/* The body must be a JSON document: parsed (with max_body and
	 * max_json_depth) before the handler runs; an empty body is 400
	 * body_required. The handler gets it from mer_http_req_json(). */
	MER_HTTP_JSON_BODY = 1u << 0,
	/* As above, but an empty body is allowed (mer_http_req_json() is then
	 * NULL). */
	MER_HTTP_JSON_OPTIONAL = 1u << 1,
};

/*
 * One route. pattern is a path of '/'-separated segments; each segment is
 * a literal ("jobs", "placements:dry-run"), a parameter "{name}" that
 * matches one non-empty segment, or a parameter with a literal suffix
 * "{name}:verb" (Google API style custom verbs: "/v1/sites/{name}:drain").
 * Literal prefixes before a parameter are not supported. When several
 * patterns match a path, the one with the most literal characters wins (so
 * "/v1/sites/x:drain" goes to "{name}:drain" rather than to "{name}");
 * methods are compared only against the winning pattern, which decides
 * between the handler, 405 and its Allow header. Registering the same
 * method and pattern twice is MER_EEXIST.
 */
struct mer_http_route {
	const char *method;  /* "GET", "POST", "PUT", "PATCH", "DELETE" */
	const char *pattern; /* "/v1/jobs/{id}" */
	mer_http_handler_fn handler;
	void *arg;	/* passed to the handler as route_arg */
	unsigned flags; /* MER_HTTP_JSON_* */
};

/*
 * Called once for every request that reached this module, when its answer
 * is handed to nng (or when the client went away first: status 499, as
 * nginx logs it). route is the matched pattern, or "unmatched" for 404s
 * and requests refused before routing; method is the request's method when
 * it is one of GET HEAD POST PUT PATCH DELETE OPTIONS, else "OTHER" (so
 * labels cannot explode). May be called from nng's threads with nng locks
 * held: it must only update counters — no blocking, no calls into this
 * module or nng.
 */
typedef void (*mer_http_observe_fn)(void *arg, const char *method,
				    const char *route, int status,
				    double seconds);

struct mer_http_config {
	/* "http://127.0.0.1:0" (0 picks a free port, see
	 * mer_http_server_port) or "https://HOST:PORT". Required. */
	const char *url;
	/* PEM files; both required for https:// and refused for http://. The
	 * key must not be encrypted. */
	const char *tls_cert_file;
	const char *tls_key_file;
	unsigned workers;	  /* handler threads; 0 = 8 */
	unsigned max_queue;	  /* requests waiting for a worker; 0 = 256 */
	size_t max_body;	  /* bytes; 0 = 1 MiB */
	size_t max_json_depth;	  /* 0 = MER_JSON_MAX_DEPTH */
	unsigned body_timeout_ms; /* whole body; 0 = 10000 */
	void *arg;		  /* for mer_http_req_server_arg() */
	mer_http_observe_fn observe; /* may be NULL */
	void *observe_arg;
};

/*
 * Creates a server for cfg (strings are copied). Does not listen yet.
 * MER_EINVAL for a bad URL or TLS settings that do not fit the scheme,
 * MER_EIO when the certificate or key cannot be read or used (err, if
 * given, says why), MER_EEXIST when another nng HTTP server in this process
 * already serves that address with a catch-all handler.
 */
int mer_http_server_new(const struct mer_http_config *cfg,
			struct mer_http_server **out, char *err, size_t errlen);

/* Adds a route (the strings are copied). Only before start: MER_ESTATE
 * after. MER_EINVAL for a malformed pattern or method. */
int mer_http_server_add_route(struct mer_http_server *srv,
			      const struct mer_http_route *route);
/* Adds n routes; stops at the first error and returns it. */
int mer_http_server_add_routes(struct mer_http_server *srv,
			       const struct mer_http_route *routes, size_t n);

/* Starts the workers and listens. MER_EIO when the address cannot be bound
 * (in use, not local), MER_ESTATE when already started or stopped. */
int mer_http_server_start(struct mer_http_server *srv);

/* The TCP port the server listens on (the real one when the URL said 0);
 * 0 before start. */
int mer_http_server_port(const struct mer_http_server *srv);

/*
 * Stops at once: no new connections; open connections are closed (a
 * request in flight gets no answer); requests waiting for a worker are
 * dropped; then waits for running handlers to return and joins the
 * workers. Idempotent; a stopped server cannot be started again.
 */
void mer_http_server_stop(struct mer_http_server *srv);

/* Stops if needed, waits for requests this module still tracks, and frees
 * the server (nng tears its own part down asynchronously). Accepts NULL. */
void mer_http_server_free(struct mer_http_server *srv);

struct mer_http_stats {
	unsigned workers; /* threads */
	unsigned busy;	  /* workers running a handler now */
	unsigned queued;  /* requests waiting for a worker */
};
/* A snapshot, for a queue-depth gauge. */
void mer_http_server_stats(struct mer_http_server *srv,
			   struct mer_http_stats *out);

/* ---- requests (handlers only; pointers live until the handler returns) */

/* Upper-case method as sent ("GET"; HEAD requests show "HEAD"). */
const char *mer_http_req_method(const struct mer_http_req *req);
/* The path as sent, without the query string, not decoded. */
const char *mer_http_req_path(const struct mer_http_req *req);
/* The matched route pattern, e.g. "/v1/jobs/{id}". */
const char *mer_http_req_route(const struct mer_http_req *req);
/* A path parameter, percent-decoded ("{id}" -> "id"); NULL if the route
 * has no such parameter. */
const char *mer_http_req_param(const struct mer_http_req *req,
			       const char *name);
/*
 * A query parameter, decoded ('+' is a space): the first value when the
 * name repeats, "" for "?flag" or "?flag=", NULL when absent.
 */
const char *mer_http_req_query(const struct mer_http_req *req,
			       const char *name);
/* Number of query parameters, and the i-th (for rejecting unknown ones). */
size_t mer_http_req_query_count(const struct mer_http_req *req);
int mer_http_req_query_at(const struct mer_http_req *req, size_t i,
			  const char **name, const char **value);
/*
 * A request header by name, case-insensitively ("Authorization",
 * "Idempotency-Key"); the first one when repeated; NULL when absent (or if
 * the client has gone away meanwhile). The value is a copy owned by req.
 */
const char *mer_http_req_header(struct mer_http_req *req, const char *name);
/* The raw body (NUL-terminated for convenience; may hold NULs) and its
 * length; NULL with *len 0 when there is none. */
const char *mer_http_req_body(const struct mer_http_req *req, size_t *len);
/* The parsed body of a MER_HTTP_JSON_* route (borrowed), else NULL. */
json_t *mer_http_req_json(const struct mer_http_req *req);
/* The parsed body as a document (named "request body"), so handlers can
 * report "request body:LINE:COL: ..." with mer_json_doc_errf(); NULL
 * when there is none. */
const struct mer_json_doc *mer_http_req_doc(const struct mer_http_req *req);
/* cfg->arg of the server. */
void *mer_http_req_server_arg(const struct mer_http_req *req);

/* ---- responses ------------------------------------------------------- */

/* A JSON response; takes a reference to body (json_incref). Replaces any
 * body set before. MER_ENOMEM. */
int mer_http_res_json(struct mer_http_res *res, int status, json_t *body);
/* The same, but steals the caller's reference (as jansson's _new). body
 * NULL is MER_ENOMEM, so the result of json_pack() can go straight in. */
int mer_http_res_json_new(struct mer_http_res *res, int status, json_t *body);
/* A non-JSON body (copied), e.g. the Prometheus text of /metrics with
 * content type "text/plain; version=0.0.4; charset=utf-8". */
int mer_http_res_text(struct mer_http_res *res, int status,
		      const char *content_type, const char *data, size_t len);
/* Status with no body (204, 202...). */
void mer_http_res_status(struct mer_http_res *res, int status);
/* Adds a header (Location, ETag, Retry-After...). Content-Type,
 * Content-Length and Connection are the module's: MER_EINVAL. */
int mer_http_res_header(struct mer_http_res *res, const char *name,
			const char *value);
/*
 * An error response {"error": code, "message": ..., "field": field} (field
 * omitted when NULL), e.g. (res, 400, "invalid", "stages[0].gpu",
 * "unknown GPU model %s", m). Returns 0 or MER_ENOMEM.
 */
int mer_http_res_error(struct mer_http_res *res, int status, const char *code,
		       const char *field, const char *fmt, ...)
    __attribute__((format(printf, 5, 6)));
/*
 * The same with status and code derived from a mer_err value
 * (mer_http_status_for_err, mer_errname). Returns err itself, so a handler
 * can write: return mer_http_res_fail(res, MER_EINVAL, "name", "...");
 */
int mer_http_res_fail(struct mer_http_res *res, int err, const char *field,
		      const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

/*
 * The HTTP status for a mer_err code: EINVAL/EPARSE/EPROTO 400, EAUTH/
 * ECRYPTO/EEXPIRED 401, EPERM/EREVOKED 403, ENOTFOUND 404, EEXIST/
 * ECOMPARE/ESTATE/EUSED/EREPLAY/ECANCELED 409, ETOOBIG 413, EUNSUPPORTED
 * 501, EREMOTE 502, EUNREACHABLE/EBUSY/ECLOSED/ENOTLEADER 503,
 * ETIMEDOUT 504, others (ENOMEM, EIO, unknown) 500; 0 gives 200.
 */
int mer_http_status_for_err(int err);

#endif
