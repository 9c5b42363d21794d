/*
 * A small REST server: an HTTP/1.1 server of our own (plain sockets, one
 * epoll thread, OpenSSL for https), a route table with path parameters,
 * handlers run on a worker pool this module owns, JSON request and response
 * helpers, JSON error bodies, request limits and a per-request hook for
 * metrics. It knows nothing about jobs or sites; the broker registers its
 * routes. Linux only (epoll, eventfd).
 *
 * Life cycle: mer_http_server_new() -> mer_http_server_add_route()... ->
 * mer_http_server_start() -> mer_http_server_port() -> ... ->
 * mer_http_server_stop() -> mer_http_server_free().
 *
 * Threads. One I/O thread owns every connection: it accepts, reads and
 * parses request lines and headers, matches the route (cheap), answers
 * what needs no handler at once (400/404/405/408/411/413/417/431/503/505),
 * reads bodies, and writes answers, all on non-blocking sockets, so a slow
 * or stalled client never holds it. A complete request is queued for one
 * of the worker threads, which parses the JSON body, calls the handler and
 * serializes the answer; the I/O thread writes it. Handlers may therefore
 * block (talk to etcd, sleep); a slow handler holds one worker, never the
 * I/O thread. When every worker is busy requests wait in a queue of
 * max_queue entries; past that the answer is 503 {"error":"busy"} with
 * Retry-After: 1.
 *
 * HTTP. HTTP/1.0 and 1.1; keep-alive (1.1 by default, 1.0 when asked);
 * pipelined requests are answered in order: the next request is read only
 * once the previous answer has been written to the socket. HEAD is served
 * by the GET route without the body. Request bodies need Content-Length
 * (one, digits only); Expect: 100-continue is answered. Answers always
 * carry Content-Length (but 204/304) and Connection: close when the
 * connection ends after them; no Date header. Parsing is strict where a
 * lenient parser could disagree with a proxy about where a request ends:
 * folded header lines, a space before a colon, a bare CR, several
 * Content-Length headers or several Host headers are 400.
 *
 * Errors. Everything this module sends on its own is JSON:
 *   {"error": "<code>", "message": "<text>"[, "field": "<path>"]}
 * with Content-Type application/json. Codes sent by the module itself:
 *   400 invalid_request      malformed request line, header or target, bad
 *                            percent-encoding in the path or query, NUL
 *                            bytes, too many query parameters, bad or
 *                            repeated Content-Length, no Host in HTTP/1.1
 *   400 invalid_json         the body of a JSON route is not JSON, or is
 *                            nested deeper than max_json_depth; the message
 *                            is "request body:LINE:COLUMN: what is wrong"
 *   400 body_required        a MER_HTTP_JSON_BODY route got no body
 *   404 not_found            no route has this path
 *   405 method_not_allowed   a route has this path, not this method (with an
 *                            Allow header listing the methods)
 *   408 timeout              the request line and headers, or the body, did
 *                            not arrive in time
 *   411 length_required      a request with Transfer-Encoding (chunked)
 *   413 too_large            Content-Length over max_body (the body is not
 *                            read)
 *   417 expectation_failed   an Expect header other than 100-continue
 *   431 request_header_too_large  request line and headers over
 *                            max_header_bytes, or over max_headers fields
 *   503 busy / unavailable   queue full or too many connections / server
 *                            stopping
 *   505 http_version         a version other than HTTP/1.0 and HTTP/1.1
 *   500 internal             out of memory and the like
 * After 400 for a malformed head, 408, 411, 413, 417, 431, 505 and 503
 * unavailable the connection is closed; after 404, 405 and the other 400s
 * (the framing being sound) the body is read and the connection goes on.
 * A handler that returns a mer_err code (err.h) without having set an error
 * response gets mer_http_status_for_err(code) with
 * {"error": mer_errname(code), "message": mer_strerror(code)}.
 *
 * Limits (struct mer_http_config; all enforced by this module):
 *  - header_timeout_ms: a request's line and headers must all arrive
 *    within it from their first byte; for a connection's first request,
 *    from the accept, the TLS handshake included. A client trickling bytes
 *    (slowloris) gets 408 and is closed at the limit; a connection that has
 *    sent nothing (or has not finished its handshake) is closed silently.
 *  - max_header_bytes and max_headers: 431, then close. The line and
 *    headers of one request are buffered (max_header_bytes at most).
 *  - max_body: Content-Length is checked before anything is read; the body
 *    buffer grows as bytes arrive (16 KiB, doubling, never past
 *    Content-Length), so announcing a big body and sending nothing costs
 *    nothing. body_timeout_ms bounds the whole body (408, then close). A
 *    JSON route holds the body and its parsed copy, about 2 x max_body,
 *    while its handler runs.
 *  - idle_timeout_ms: a keep-alive connection with no request in progress
 *    is closed silently.
 *  - write_timeout_ms: an answer is written as fast as the client reads
 *    it; when no byte of it could be written for this long the connection
 *    is closed, so a client that never reads cannot pin memory.
 *  - max_connections: a connection accepted past it is answered 503 busy
 *    (Retry-After: 1) and closed at once, without reading a request; over
 *    https it is closed without an answer (that would need a handshake).
 *    Each connection costs a descriptor and a few KiB.
 *  - After an answer that closes the connection, the write side is shut
 *    and what the client still sends is read and dropped for up to 1 s, so
 *    the close does not turn into a TCP reset that loses the answer.
 *  - TLS: TLS 1.2 or newer, no renegotiation; the handshake runs on the I/O
 *    thread, non-blocking, and counts against header_timeout_ms.
 *  - Handlers cannot be interrupted: a handler that never returns holds a
 *    worker for ever, and mer_http_server_stop() waits for it. While a
 *    request waits for or runs on a worker its connection is still read
 *    (what arrives is kept, up to max_header_bytes), so a client that
 *    closes its connection, even only its sending side, is taken as gone
 *    at once: a request still queued is dropped without running its
 *    handler, a running handler's answer is discarded; both are observed
 *    as 499.
 *  - Fairness: one connection takes a bounded number of steps (reads,
 *    requests, writes) per turn of the I/O thread, so a client pipelining
 *    requests that are answered at once (404s) cannot starve the others.
 *  - Paths: matched on the raw (still percent-encoded) path, so an encoded
 *    '/' (%2F) or ':' (%3A) stays inside one segment or parameter; parameter
 *    values are decoded afterwards. The absolute form
 *    (GET http://host/path) is accepted and its authority ignored.
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
 * is queued for the client (or when the client went away first: status
 * 499, as nginx logs it). route is the matched pattern, or "unmatched" for
 * 404s and requests refused before routing; method is the request's method
 * when it is one of GET HEAD POST PUT PATCH DELETE OPTIONS, else "OTHER"
 * (also for requests refused before their method was read, so labels
 * cannot explode). Called on the I/O thread (or in
 * mer_http_server_stop()): it must only update counters — no blocking, no
 * calls into this module.
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
	/* Request line and headers, from their first byte (for the first
	 * request of a connection: from the accept, TLS handshake included);
	 * 0 = 10000. */
	unsigned header_timeout_ms;
	/* A keep-alive connection between requests; 0 = 60000. */
	unsigned idle_timeout_ms;
	/* An answer the client does not read: closed when no byte of it
	 * could be written for this long; 0 = 10000. */
	unsigned write_timeout_ms;
	unsigned max_connections; /* open at once; 0 = 1024 */
	/* Request line and headers together, bytes; 0 = 8192 (at least
	 * 256). */
	size_t max_header_bytes;
	unsigned max_headers;	     /* header fields; 0 = 100 */
	void *arg;		     /* for mer_http_req_server_arg() */
	mer_http_observe_fn observe; /* may be NULL */
	void *observe_arg;
};

/*
 * Creates a server for cfg (strings are copied). Does not listen yet.
 * The URL is "http://HOST[:PORT][/]" or "https://..." (HOST a name, an
 * IPv4 address or "[v6]"; no other path). MER_EINVAL for a bad URL or TLS
 * settings that do not fit the scheme, MER_EIO when the certificate or key
 * cannot be read or used (err, if given, says why).
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

/* Stops if needed and frees everything the server holds. Accepts NULL. */
void mer_http_server_free(struct mer_http_server *srv);

struct mer_http_stats {
	unsigned workers;     /* threads */
	unsigned busy;	      /* workers running a handler now */
	unsigned queued;      /* requests waiting for a worker */
	unsigned connections; /* open client connections */
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
 * "Idempotency-Key"); the first one when repeated; NULL when absent. The
 * value points into req's copy of the request head (valid until the
 * handler returns).
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
 * content type "text/plain; version=0.0.4; charset=utf-8" (NULL: plain
 * text). MER_EINVAL for a content type with CR, LF or other control
 * characters (it is sent as a header); MER_ENOMEM. */
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
