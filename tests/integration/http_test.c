/*
 * Integration tests for common/http: a real server on 127.0.0.1 (port chosen
 * at run time) and real clients (libcurl, and raw sockets where curl is too
 * polite: oversized Content-Length, chunked bodies, stalled bodies).
 */
#include "common/err.h"
#include "common/http.h"
#include "common/log.h"
#include "tests/harness.h"

#include <arpa/inet.h>
#include <curl/curl.h>
#include <errno.h>
#include <netinet/in.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

/* ---- time ------------------------------------------------------------- */

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static void sleep_ms(int ms)
{
	struct timespec ts = {ms / 1000, (long)(ms % 1000) * 1000000L};

	nanosleep(&ts, NULL);
}

/* ---- observe hook ----------------------------------------------------- */

#define MAX_SEEN 512

struct seen {
	char method[8];
	char route[64];
	int status;
};

static pthread_mutex_t seen_mu = PTHREAD_MUTEX_INITIALIZER;
static struct seen seen[MAX_SEEN];
static int nseen;

static void observe(void *arg, const char *method, const char *route,
		    int status, double seconds)
{
	(void)arg;
	(void)seconds;
	pthread_mutex_lock(&seen_mu);
	if (nseen < MAX_SEEN) {
		snprintf(seen[nseen].method, sizeof(seen[nseen].method), "%s",
			 method);
		snprintf(seen[nseen].route, sizeof(seen[nseen].route), "%s",
			 route);
		seen[nseen].status = status;
		nseen++;
	}
	pthread_mutex_unlock(&seen_mu);
}

static void seen_reset(void)
{
	pthread_mutex_lock(&seen_mu);
	nseen = 0;
	pthread_mutex_unlock(&seen_mu);
}

/* The hook runs when the answer is queued, so a client may see it
 * first: wait a little for the record. */
static int seen_wait(const char *method, const char *route, int status)
{
	for (int tries = 0; tries < 200; tries++) {
		int found = 0;

		pthread_mutex_lock(&seen_mu);
		for (int i = 0; i < nseen; i++)
			if (strcmp(seen[i].method, method) == 0 &&
			    strcmp(seen[i].route, route) == 0 &&
			    seen[i].status == status)
				found = 1;
		pthread_mutex_unlock(&seen_mu);
		if (found)
			return 1;
		sleep_ms(10);
	}
	return 0;
}

/* ---- handlers --------------------------------------------------------- */

static pthread_mutex_t gate_mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t gate_cv = PTHREAD_COND_INITIALIZER;
static int gate_open;
static int gate_entered;
static int gate_returned;

static void gate_reset(void)
{
	pthread_mutex_lock(&gate_mu);
	gate_open = 0;
	gate_entered = 0;
	gate_returned = 0;
	pthread_mutex_unlock(&gate_mu);
}

static void gate_release(void)
{
	pthread_mutex_lock(&gate_mu);
	gate_open = 1;
	pthread_cond_broadcast(&gate_cv);
	pthread_mutex_unlock(&gate_mu);
}

static int gate_count(int *which)
{
	int v;

	pthread_mutex_lock(&gate_mu);
	v = *which;
	pthread_mutex_unlock(&gate_mu);
	return v;
}

static int wait_count(int *which, int want, int timeout_ms)
{
	for (int t = 0; t < timeout_ms; t += 10) {
		if (gate_count(which) >= want)
			return 1;
		sleep_ms(10);
	}
	return 0;
}

static int h_gate(struct mer_http_req *req, struct mer_http_res *res, void *arg)
{
	(void)req;
	(void)arg;
	pthread_mutex_lock(&gate_mu);
	gate_entered++;
	/* Bounded, so a broken test cannot hang the program. */
	for (int i = 0; i < 300 && !gate_open; i++) {
		struct timespec ts;

		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += 100000000L;
		if (ts.tv_nsec >= 1000000000L) {
			ts.tv_sec++;
			ts.tv_nsec -= 1000000000L;
		}
		pthread_cond_timedwait(&gate_cv, &gate_mu, &ts);
	}
	gate_returned++;
	pthread_mutex_unlock(&gate_mu);
	return mer_http_res_json_new(res, 200, json_pack("{s:b}", "gate", 1));
}

static int h_echo(struct mer_http_req *req, struct mer_http_res *res, void *arg)
{
	(void)arg;
	return mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:O, s:s, s:s}", "echo", mer_http_req_json(req),
		      "method", mer_http_req_method(req), "route",
		      mer_http_req_route(req)));
}

static int h_job_get(struct mer_http_req *req, struct mer_http_res *res,
		     void *arg)
{
	(void)arg;
	return mer_http_res_json_new(res, 200,
				     json_pack("{s:s, s:s, s:s}", "id",
					       mer_http_req_param(req, "id"),
					       "route", mer_http_req_route(req),
					       "path", mer_http_req_path(req)));
}

static int h_job_delete(struct mer_http_req *req, struct mer_http_res *res,
			void *arg)
{
	(void)req;
	(void)arg;
	mer_http_res_status(res, 204);
	return 0;
}

static int h_placement(struct mer_http_req *req, struct mer_http_res *res,
		       void *arg)
{
	(void)arg;
	return mer_http_res_json_new(res, 200,
				     json_pack("{s:s, s:s}", "id",
					       mer_http_req_param(req, "id"),
					       "what", "placement"));
}

static int h_jobs_list(struct mer_http_req *req, struct mer_http_res *res,
		       void *arg)
{
	json_t *q = json_object();
	size_t n = mer_http_req_query_count(req);

	(void)arg;
	for (size_t i = 0; i < n; i++) {
		const char *name, *value;

		if (mer_http_req_query_at(req, i, &name, &value) == 0 &&
		    !json_object_get(q, name))
			json_object_set_new(q, name, json_string(value));
	}
	return mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:o, s:i, s:s?}", "query", q, "count", (int)n, "limit",
		      mer_http_req_query(req, "limit")));
}

static int h_jobs_create(struct mer_http_req *req, struct mer_http_res *res,
			 void *arg)
{
	json_t *body = mer_http_req_json(req);
	const char *name = json_string_value(json_object_get(body, "name"));

	(void)arg;
	if (!name)
		return mer_http_res_fail(res, MER_EINVAL, "name",
					 "name must be a string");
	mer_http_res_header(res, "Location", "/v1/jobs/j-1");
	return mer_http_res_json_new(
	    res, 201, json_pack("{s:s, s:s}", "id", "j-1", "name", name));
}

static int h_dry_run(struct mer_http_req *req, struct mer_http_res *res,
		     void *arg)
{
	(void)arg;
	return mer_http_res_json_new(res, 200,
				     json_pack("{s:b, s:b}", "dry_run", 1,
					       "had_body",
					       mer_http_req_json(req) != NULL));
}

static int h_drain(struct mer_http_req *req, struct mer_http_res *res,
		   void *arg)
{
	(void)arg;
	return mer_http_res_json_new(res, 200,
				     json_pack("{s:s, s:b}", "name",
					       mer_http_req_param(req, "name"),
					       "drained", 1));
}

static int h_site_get(struct mer_http_req *req, struct mer_http_res *res,
		      void *arg)
{
	(void)arg;
	return mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:s}", "name", mer_http_req_param(req, "name")));
}

static int h_healthz(struct mer_http_req *req, struct mer_http_res *res,
		     void *arg)
{
	(void)req;
	(void)arg;
	return mer_http_res_text(res, 200, "text/plain; charset=utf-8", "ok\n",
				 3);
}

static int h_metrics(struct mer_http_req *req, struct mer_http_res *res,
		     void *arg)
{
	static const char text[] = "# TYPE meridian_up gauge\nmeridian_up 1\n";

	(void)req;
	(void)arg;
	return mer_http_res_text(res, 200,
				 "text/plain; version=0.0.4; charset=utf-8",
				 text, sizeof(text) - 1);
}

static int h_headers(struct mer_http_req *req, struct mer_http_res *res,
		     void *arg)
{
	(void)arg;
	return mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:s?, s:s?, s:s?, s:s?}", "authorization",
		      mer_http_req_header(req, "authorization"),
		      "idempotency_key",
		      mer_http_req_header(req, "Idempotency-Key"), "missing",
		      mer_http_req_header(req, "X-Not-There"), "again",
		      mer_http_req_header(req, "AUTHORIZATION")));
}

static int h_sleep(struct mer_http_req *req, struct mer_http_res *res,
		   void *arg)
{
	const char *ms = mer_http_req_query(req, "ms");
	long v = ms ? strtol(ms, NULL, 10) : 100;

	(void)arg;
	if (v < 0 || v > 5000)
		return MER_EINVAL;
	sleep_ms((int)v);
	return mer_http_res_json_new(res, 200,
				     json_pack("{s:i}", "slept", (int)v));
}

static int h_fail(struct mer_http_req *req, struct mer_http_res *res, void *arg)
{
	const char *code = mer_http_req_param(req, "code");

	(void)arg;
	/* What the handler set before failing must not leak out. */
	mer_http_res_json_new(res, 200, json_pack("{s:s}", "secret", "no"));
	if (strcmp(code, "notfound") == 0)
		return MER_ENOTFOUND;
	if (strcmp(code, "unreachable") == 0)
		return MER_EUNREACHABLE;
	if (strcmp(code, "field") == 0)
		return mer_http_res_fail(res, MER_EINVAL, "stages[0].gpu",
					 "unknown GPU model %s", "h100x");
	if (strcmp(code, "custom") == 0) {
		mer_http_res_error(res, 429, "quota", NULL, "slow down");
		return MER_EBUSY;
	}
	return MER_EIO;
}

static int h_arg(struct mer_http_req *req, struct mer_http_res *res, void *arg)
{
	return mer_http_res_json_new(
	    res, 200,
	    json_pack("{s:s, s:s}", "server",
		      (const char *)mer_http_req_server_arg(req), "route",
		      (const char *)arg));
}

/* Tries to smuggle a header in through the content type; records what
 * mer_http_res_text() said. */
static int ctype_rv = -1;

static int h_ctype(struct mer_http_req *req, struct mer_http_res *res,
		   void *arg)
{
	int rv;

	(void)req;
	(void)arg;
	rv = mer_http_res_text(res, 200, "text/plain\r\nX-Injected: yes", "x",
			       1);
	__atomic_store_n(&ctype_rv, rv, __ATOMIC_SEQ_CST);
	return rv;
}

static const struct mer_http_route routes[] = {
    {"GET", "/healthz", h_healthz, NULL, 0},
    {"GET", "/metrics", h_metrics, NULL, 0},
    {"GET", "/v1/jobs", h_jobs_list, NULL, 0},
    {"POST", "/v1/jobs", h_jobs_create, NULL, MER_HTTP_JSON_BODY},
    {"GET", "/v1/jobs/{id}", h_job_get, NULL, 0},
    {"DELETE", "/v1/jobs/{id}", h_job_delete, NULL, 0},
    {"GET", "/v1/jobs/{id}/placement", h_placement, NULL, 0},
    {"POST", "/v1/placements:dry-run", h_dry_run, NULL, MER_HTTP_JSON_OPTIONAL},
    {"GET", "/v1/sites/{name}", h_site_get, NULL, 0},
    {"POST", "/v1/sites/{name}:drain", h_drain, NULL, 0},
    {"POST", "/v1/echo", h_echo, NULL, MER_HTTP_JSON_BODY},
    {"GET", "/v1/headers", h_headers, NULL, 0},
    {"GET", "/v1/sleep", h_sleep, NULL, 0},
    {"GET", "/v1/gate", h_gate, NULL, 0},
    {"GET", "/v1/fail/{code}", h_fail, NULL, 0},
    {"GET", "/v1/arg", h_arg, "route-arg", 0},
    {"GET", "/v1/ctype", h_ctype, NULL, 0},
};

/* ---- fixture ---------------------------------------------------------- */

struct fx {
	struct mer_http_server *srv;
	int port;
	char base[64];
	const char *cafile; /* for https */
};

static char server_arg[] = "server-arg";

static void cfg_defaults(struct mer_http_config *cfg)
{
	memset(cfg, 0, sizeof(*cfg));
	cfg->url = "http://127.0.0.1:0";
	cfg->workers = 4;
	cfg->max_body = 4096;
	cfg->max_json_depth = 8;
	cfg->body_timeout_ms = 2000;
	cfg->arg = server_arg;
	cfg->observe = observe;
}

/* Starts a server for cfg (defaults when NULL), runs body, always frees. */
static void with_server(const struct mer_http_config *cfg,
			void (*body)(struct fx *))
{
	struct mer_http_config def;
	struct fx fx;
	char err[256];
	int rv;

	if (!cfg) {
		cfg_defaults(&def);
		cfg = &def;
	}
	memset(&fx, 0, sizeof(fx));
	seen_reset();
	gate_reset();
	rv = mer_http_server_new(cfg, &fx.srv, err, sizeof(err));
	if (rv) {
		t_fail(__FILE__, __LINE__, "server_new: %s (%s)",
		       mer_strerror(rv), err);
		return;
	}
	rv = mer_http_server_add_routes(fx.srv, routes,
					sizeof(routes) / sizeof(routes[0]));
	if (rv == 0)
		rv = mer_http_server_start(fx.srv);
	if (rv) {
		t_fail(__FILE__, __LINE__, "server start: %s",
		       mer_strerror(rv));
		mer_http_server_free(fx.srv);
		return;
	}
	fx.port = mer_http_server_port(fx.srv);
	snprintf(fx.base, sizeof(fx.base), "%s://127.0.0.1:%d",
		 strncmp(cfg->url, "https", 5) == 0 ? "https" : "http",
		 fx.port);
	if (fx.port <= 0)
		t_fail(__FILE__, __LINE__, "no port: %d", fx.port);
	else
		body(&fx);
	gate_release(); /* never leave a handler waiting */
	mer_http_server_free(fx.srv);
}

/* with_server on one worker with max_queue requests waiting for it. */
static void with_one_worker(unsigned max_queue, void (*body)(struct fx *))
{
	struct mer_http_config cfg;

	cfg_defaults(&cfg);
	cfg.workers = 1;
	cfg.max_queue = max_queue;
	with_server(&cfg, body);
}

/* ---- curl client ------------------------------------------------------ */

struct buf {
	char *p;
	size_t n;
};

static size_t buf_write(char *data, size_t size, size_t nmemb, void *arg)
{
	struct buf *b = arg;
	size_t n = size * nmemb;
	char *p = realloc(b->p, b->n + n + 1);

	if (!p)
		return 0;
	memcpy(p + b->n, data, n);
	b->n += n;
	p[b->n] = '\0';
	b->p = p;
	return n;
}

struct resp {
	CURLcode cc;
	long status;
	long connects; /* new connections this request made */
	struct buf body;
	struct buf hdrs;
	json_t *json;
	double secs;
};

static void resp_free(struct resp *r)
{
	free(r->body.p);
	free(r->hdrs.p);
	json_decref(r->json);
	memset(r, 0, sizeof(*r));
}

/* A response header's value (copied into out), or NULL. */
static const char *resp_header(const struct resp *r, const char *name,
			       char *out, size_t n)
{
	const char *p = r->hdrs.p;
	size_t len = strlen(name);

	while (p && *p) {
		const char *eol = strstr(p, "\r\n");
		size_t ll = eol ? (size_t)(eol - p) : strlen(p);

		if (ll > len && strncasecmp(p, name, len) == 0 &&
		    p[len] == ':') {
			const char *v = p + len + 1;
			size_t vn;

			while (*v == ' ')
				v++;
			vn = (size_t)(p + ll - v);
			if (vn >= n)
				vn = n - 1;
			memcpy(out, v, vn);
			out[vn] = '\0';
			return out;
		}
		p = eol ? eol + 2 : p + ll;
	}
	return NULL;
}

struct req_opts {
	const char *method;
	const char *body;
	long body_len; /* -1: strlen(body) */
	const char *headers[8];
	const char *cafile;
	CURL *reuse; /* a handle to reuse (keep-alive), or NULL */
};

static void do_request(const char *url, const struct req_opts *o,
		       struct resp *r)
{
	CURL *c = o && o->reuse ? o->reuse : curl_easy_init();
	struct curl_slist *hl = NULL;
	bool expect_set = false;
	double t0 = now_s();

	memset(r, 0, sizeof(*r));
	if (!c) {
		r->cc = CURLE_FAILED_INIT;
		return;
	}
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 15000L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, buf_write);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &r->body);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, buf_write);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, &r->hdrs);
	curl_easy_setopt(c, CURLOPT_NOBODY, 0L);
	curl_easy_setopt(c, CURLOPT_HTTPGET, 1L);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, NULL);
	for (int i = 0; o && i < 8 && o->headers[i]; i++) {
		hl = curl_slist_append(hl, o->headers[i]);
		if (strncasecmp(o->headers[i], "Expect:", 7) == 0)
			expect_set = true;
	}
	if (o && o->body) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE,
				 o->body_len >= 0 ? o->body_len
						  : (long)strlen(o->body));
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, o->body);
		if (!expect_set) /* no 1 s wait for 100 Continue */
			hl = curl_slist_append(hl, "Expect:");
	}
	if (o && o->method) {
		if (strcmp(o->method, "HEAD") == 0)
			curl_easy_setopt(c, CURLOPT_NOBODY, 1L);
		else
			curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, o->method);
	}
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, hl);
	if (o && o->cafile) {
		curl_easy_setopt(c, CURLOPT_CAINFO, o->cafile);
		curl_easy_setopt(c, CURLOPT_SSL_VERIFYPEER, 1L);
		curl_easy_setopt(c, CURLOPT_SSL_VERIFYHOST, 2L);
	}
	r->cc = curl_easy_perform(c);
	r->secs = now_s() - t0;
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
	curl_easy_getinfo(c, CURLINFO_NUM_CONNECTS, &r->connects);
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, NULL);
	curl_easy_setopt(c, CURLOPT_POSTFIELDS, NULL);
	curl_slist_free_all(hl);
	if (!(o && o->reuse))
		curl_easy_cleanup(c);
	if (r->body.p)
		r->json = json_loads(r->body.p, 0, NULL);
}

static void req_simple(struct fx *fx, const char *method, const char *path,
		       const char *body, struct resp *r)
{
	char url[512];
	struct req_opts o;

	memset(&o, 0, sizeof(o));
	o.method = method;
	o.body = body;
	o.body_len = -1;
	o.cafile = fx->cafile;
	snprintf(url, sizeof(url), "%s%s", fx->base, path);
	do_request(url, &o, r);
}

static const char *jstr(const json_t *j, const char *key)
{
	return json_string_value(json_object_get(j, key));
}

/* Checks a JSON error answer. */
#define EXPECT_ERROR(r, st, code)                                              \
	do {                                                                   \
		char ct_[128];                                                 \
		T_EQ_INT((r)->cc, CURLE_OK);                                   \
		T_EQ_INT((r)->status, (st));                                   \
		T_ASSERT((r)->json != NULL);                                   \
		T_EQ_STR(jstr((r)->json, "error"), (code));                    \
		T_EXPECT(jstr((r)->json, "message") != NULL);                  \
		T_EQ_STR(resp_header((r), "Content-Type", ct_, sizeof(ct_)),   \
			 "application/json");                                  \
	} while (0)

/* ---- raw sockets ------------------------------------------------------ */

static int raw_connect(int port)
{
	struct sockaddr_in a;
	int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

	if (fd < 0)
		return -1;
	memset(&a, 0, sizeof(a));
	a.sin_family = AF_INET;
	a.sin_port = htons((uint16_t)port);
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (connect(fd, (struct sockaddr *)&a, sizeof(a)) != 0) {
		close(fd);
		return -1;
	}
	return fd;
}

static int raw_send(int fd, const char *s)
{
	size_t n = strlen(s);

	while (n) {
		ssize_t w = send(fd, s, n, MSG_NOSIGNAL);

		if (w <= 0)
			return -1;
		s += w;
		n -= (size_t)w;
	}
	return 0;
}

/*
 * Reads until out contains until (when not NULL), EOF or timeout_ms.
 * Returns 2 when until was found, 1 on EOF/reset, 0 on timeout.
 */
static int raw_read_for(int fd, char *out, size_t n, int timeout_ms,
			const char *until)
{
	size_t got = 0;
	double end = now_s() + timeout_ms / 1e3;

	out[0] = '\0';
	for (;;) {
		struct pollfd p = {fd, POLLIN, 0};
		int left = (int)((end - now_s()) * 1e3);
		ssize_t r;

		if (until && strstr(out, until))
			return 2;
		if (left <= 0 || got == n - 1)
			return 0;
		if (poll(&p, 1, left) <= 0)
			continue;
		r = recv(fd, out + got, n - 1 - got, 0);
		if (r <= 0)
			return 1;
		got += (size_t)r;
		out[got] = '\0';
	}
}

/*
 * Reads until EOF, error or timeout_ms; out gets what arrived (NUL-ended).
 * Returns 1 on EOF/reset (the server closed), 0 on timeout.
 */
static int raw_read_all(int fd, char *out, size_t n, int timeout_ms)
{
	return raw_read_for(fd, out, n, timeout_ms, NULL);
}

/*
 * One request on a fresh connection, read until the server closes or 3 s
 * pass: raw_read_all's result, or -1 when no connection was made.
 */
static int raw_ask(int port, const char *req, char *reply, size_t n)
{
	int fd = raw_connect(port);
	int rv;

	if (fd < 0)
		return -1;
	raw_send(fd, req);
	rv = raw_read_all(fd, reply, n, 3000);
	close(fd);
	return rv;
}

/* ---- tests: basics ---------------------------------------------------- */

static void body_echo(struct fx *fx)
{
	struct resp r;
	char ct[128];

	req_simple(fx, "POST", "/v1/echo", "{\"a\": [1, 2, {\"b\": \"c\"}]}",
		   &r);
	T_EQ_INT(r.cc, CURLE_OK);
	T_EQ_INT(r.status, 200);
	T_EQ_STR(resp_header(&r, "Content-Type", ct, sizeof(ct)),
		 "application/json");
	T_ASSERT(r.json != NULL);
	T_EQ_STR(jstr(r.json, "method"), "POST");
	T_EQ_STR(jstr(r.json, "route"), "/v1/echo");
	T_EQ_STR(
	    json_string_value(json_object_get(
		json_array_get(
		    json_object_get(json_object_get(r.json, "echo"), "a"), 2),
		"b")),
	    "c");
	resp_free(&r);

	/* Handler status and extra headers. */
	req_simple(fx, "POST", "/v1/jobs", "{\"name\": \"train\"}", &r);
	T_EQ_INT(r.status, 201);
	T_EQ_STR(resp_header(&r, "Location", ct, sizeof(ct)), "/v1/jobs/j-1");
	T_EQ_STR(jstr(r.json, "name"), "train");
	resp_free(&r);

	/* Server and route arguments reach the handler. */
	req_simple(fx, "GET", "/v1/arg", NULL, &r);
	T_EQ_STR(jstr(r.json, "server"), "server-arg");
	T_EQ_STR(jstr(r.json, "route"), "route-arg");
	resp_free(&r);

	/* Text bodies keep their content type. */
	req_simple(fx, "GET", "/metrics", NULL, &r);
	T_EQ_INT(r.status, 200);
	T_EQ_STR(resp_header(&r, "Content-Type", ct, sizeof(ct)),
		 "text/plain; version=0.0.4; charset=utf-8");
	T_CONTAINS(r.body.p, "meridian_up 1\n");
	resp_free(&r);

	/* HEAD is served by the GET route, without a body. */
	req_simple(fx, "HEAD", "/healthz", NULL, &r);
	T_EQ_INT(r.cc, CURLE_OK);
	T_EQ_INT(r.status, 200);
	T_EXPECT(r.body.n == 0);
	resp_free(&r);
}

static void test_json_echo(void)
{
	with_server(NULL, body_echo);
}

static void body_path_params(struct fx *fx)
{
	struct resp r;

	req_simple(fx, "GET", "/v1/jobs/j-123", NULL, &r);
	T_EQ_INT(r.status, 200);
	T_EQ_STR(jstr(r.json, "id"), "j-123");
	T_EQ_STR(jstr(r.json, "route"), "/v1/jobs/{id}");
	resp_free(&r);

	/* Percent-decoding happens after matching: %2F stays in the id. */
	req_simple(fx, "GET", "/v1/jobs/job%2F42%20x", NULL, &r);
	T_EQ_INT(r.status, 200);
	T_EQ_STR(jstr(r.json, "id"), "job/42 x");
	T_EQ_STR(jstr(r.json, "path"), "/v1/jobs/job%2F42%20x");
	resp_free(&r);

	req_simple(fx, "GET", "/v1/jobs/abc/placement", NULL, &r);
	T_EQ_INT(r.status, 200);
	T_EQ_STR(jstr(r.json, "id"), "abc");
	T_EQ_STR(jstr(r.json, "what"), "placement");
	resp_free(&r);

	/* Custom verbs, with an encoded ':' inside the name. */
	req_simple(fx, "POST", "/v1/sites/east%3A1:drain", "", &r);
	T_EQ_INT(r.status, 200);
	T_EQ_STR(jstr(r.json, "name"), "east:1");
	resp_free(&r);

	req_simple(fx, "GET", "/v1/sites/east-1", NULL, &r);
	T_EQ_INT(r.status, 200);
	T_EQ_STR(jstr(r.json, "name"), "east-1");
	resp_free(&r);

	/* A literal segment with a colon; the JSON body is optional. */
	req_simple(fx, "POST", "/v1/placements:dry-run", NULL, &r);
	T_EQ_INT(r.status, 200);
	T_EXPECT(json_is_false(json_object_get(r.json, "had_body")));
	resp_free(&r);
	req_simple(fx, "POST", "/v1/placements:dry-run", "{\"x\":1}", &r);
	T_EQ_INT(r.status, 200);
	T_EXPECT(json_is_true(json_object_get(r.json, "had_body")));
	resp_free(&r);

	/* Bad escapes and NUL bytes are refused, not truncated. */
	req_simple(fx, "GET", "/v1/jobs/%zz", NULL, &r);
	EXPECT_ERROR(&r, 400, "invalid_request");
	resp_free(&r);
	req_simple(fx, "GET", "/v1/jobs/a%00b", NULL, &r);
	EXPECT_ERROR(&r, 400, "invalid_request");
	resp_free(&r);
	req_simple(fx, "GET", "/v1/jobs/a%4", NULL, &r);
	EXPECT_ERROR(&r, 400, "invalid_request");
	resp_free(&r);
}

static void test_path_params(void)
{
	with_server(NULL, body_path_params);
}

static void body_query(struct fx *fx)
{
	struct resp r;
	json_t *q;

	req_simple(fx, "GET", "/v1/jobs?limit=5&tenant=a%20b+c&flag&limit=7",
		   NULL, &r);
	T_EQ_INT(r.status, 200);
	T_ASSERT(r.json != NULL);
	q = json_object_get(r.json, "query");
	T_EQ_STR(jstr(r.json, "limit"), "5"); /* first of a repeated name */
	T_EQ_STR(jstr(q, "tenant"), "a b c");
	T_EQ_STR(jstr(q, "flag"), "");
	T_EQ_INT(json_integer_value(json_object_get(r.json, "count")), 4);
	resp_free(&r);

	req_simple(fx, "GET", "/v1/jobs", NULL, &r);
	T_EQ_INT(r.status, 200);
	T_EQ_INT(json_integer_value(json_object_get(r.json, "count")), 0);
	T_EXPECT(json_is_null(json_object_get(r.json, "limit")));
	resp_free(&r);

	req_simple(fx, "GET", "/v1/jobs?x=%G1", NULL, &r);
	EXPECT_ERROR(&r, 400, "invalid_request");
	resp_free(&r);
}

static void test_query_params(void)
{
	with_server(NULL, body_query);
}

static void body_headers(struct fx *fx)
{
	struct resp r;
	struct req_opts o;
	char url[256];

	memset(&o, 0, sizeof(o));
	o.headers[0] = "Authorization: Bearer k3x9.s3cret";
	o.headers[1] = "Idempotency-Key: idem-42";
	snprintf(url, sizeof(url), "%s/v1/headers", fx->base);
	do_request(url, &o, &r);
	T_EQ_INT(r.status, 200);
	T_ASSERT(r.json != NULL);
	T_EQ_STR(jstr(r.json, "authorization"), "Bearer k3x9.s3cret");
	T_EQ_STR(jstr(r.json, "again"), "Bearer k3x9.s3cret");
	T_EQ_STR(jstr(r.json, "idempotency_key"), "idem-42");
	T_EXPECT(json_is_null(json_object_get(r.json, "missing")));
	resp_free(&r);
}

static void test_header_lookup(void)
{
	with_server(NULL, body_headers);
}

/* ---- tests: errors ---------------------------------------------------- */

static void body_bad_json(struct fx *fx)
{
	struct resp r;

	req_simple(fx, "POST", "/v1/echo", "{\n  \"a\": 1,\n  \"b\": ]\n}", &r);
	EXPECT_ERROR(&r, 400, "invalid_json");
	/* Line 3, column 8: the ']' where a value should be. */
	T_CONTAINS(jstr(r.json, "message"), "request body:3:8:");
	resp_free(&r);

	req_simple(fx, "POST", "/v1/echo", "{\"a\": 1", &r);
	EXPECT_ERROR(&r, 400, "invalid_json");
	T_CONTAINS(jstr(r.json, "message"), "request body:1:");
	resp_free(&r);

	/* Nine levels against a limit of eight. */
	req_simple(fx, "POST", "/v1/echo", "[[[[[[[[[1]]]]]]]]]", &r);
	EXPECT_ERROR(&r, 400, "invalid_json");
	resp_free(&r);
	req_simple(fx, "POST", "/v1/echo", "[[[[[[[[1]]]]]]]]", &r);
	T_EQ_INT(r.status, 200);
	resp_free(&r);

	req_simple(fx, "POST", "/v1/echo", "", &r);
	EXPECT_ERROR(&r, 400, "body_required");
	resp_free(&r);

	/* A handler's own validation error, with the field. */
	req_simple(fx, "POST", "/v1/jobs", "{\"name\": 7}", &r);
	EXPECT_ERROR(&r, 400, "invalid");
	T_EQ_STR(jstr(r.json, "field"), "name");
	resp_free(&r);
}

static void test_bad_json_400(void)
{
	with_server(NULL, body_bad_json);
}

static void body_not_found(struct fx *fx)
{
	struct resp r;

	req_simple(fx, "GET", "/v1/nope", NULL, &r);
	EXPECT_ERROR(&r, 404, "not_found");
	resp_free(&r);
	req_simple(fx, "GET", "/v1/jobs/", NULL, &r); /* empty id */
	EXPECT_ERROR(&r, 404, "not_found");
	resp_free(&r);
	req_simple(fx, "GET", "/v1/jobs/a/b/c", NULL, &r);
	EXPECT_ERROR(&r, 404, "not_found");
	resp_free(&r);
	req_simple(fx, "GET", "/", NULL, &r);
	EXPECT_ERROR(&r, 404, "not_found");
	resp_free(&r);
	req_simple(fx, "GET",
		   "/1/2/3/4/5/6/7/8/9/10/11/12/13/14/15/16/17/18/19/20/21/22/"
		   "23/24/25/26/27/28/29/30/31/32/33/34/35",
		   NULL, &r);
	EXPECT_ERROR(&r, 404, "not_found");
	resp_free(&r);
	/* With a body the server did not need. */
	req_simple(fx, "POST", "/nowhere", "{\"a\":1}", &r);
	EXPECT_ERROR(&r, 404, "not_found");
	resp_free(&r);
	T_EXPECT(seen_wait("GET", "unmatched", 404));
}

static void test_not_found_404(void)
{
	with_server(NULL, body_not_found);
}

static void body_method(struct fx *fx)
{
	struct resp r;
	char allow[128];

	req_simple(fx, "DELETE", "/v1/placements:dry-run", NULL, &r);
	EXPECT_ERROR(&r, 405, "method_not_allowed");
	T_EQ_STR(resp_header(&r, "Allow", allow, sizeof(allow)), "POST");
	resp_free(&r);

	req_simple(fx, "PUT", "/v1/jobs/abc", "{}", &r);
	EXPECT_ERROR(&r, 405, "method_not_allowed");
	T_EQ_STR(resp_header(&r, "Allow", allow, sizeof(allow)),
		 "GET, DELETE, HEAD");
	resp_free(&r);

	/* The most specific pattern decides: x:drain is the drain route. */
	req_simple(fx, "GET", "/v1/sites/x:drain", NULL, &r);
	EXPECT_ERROR(&r, 405, "method_not_allowed");
	T_EQ_STR(resp_header(&r, "Allow", allow, sizeof(allow)), "POST");
	resp_free(&r);

	req_simple(fx, "DELETE", "/v1/jobs/abc", NULL, &r);
	T_EQ_INT(r.status, 204);
	resp_free(&r);
	T_EXPECT(seen_wait("PUT", "/v1/jobs/{id}", 405));
	T_EXPECT(seen_wait("DELETE", "/v1/jobs/{id}", 204));
}

static void test_method_405(void)
{
	with_server(NULL, body_method);
}

static void body_too_large(struct fx *fx)
{
	struct resp r;
	struct req_opts o;
	char url[256], reply[4096];
	char *big = malloc(8193);
	int fd;
	double t0;

	T_ASSERT(big != NULL);
	/* Exactly the limit (4096) is fine: a JSON string of 4096 bytes. */
	memset(big, 'a', 4096);
	big[0] = '"';
	big[4095] = '"';
	big[4096] = '\0';
	req_simple(fx, "POST", "/v1/echo", big, &r);
	T_EQ_INT(r.status, 200);
	resp_free(&r);

	/* One byte over, with curl waiting for 100 Continue. */
	memset(big, ' ', 8192);
	big[8192] = '\0';
	memset(&o, 0, sizeof(o));
	o.body = big;
	o.body_len = 4097;
	o.headers[0] = "Expect: 100-continue";
	o.headers[1] = "Content-Type: application/json";
	snprintf(url, sizeof(url), "%s/v1/echo", fx->base);
	do_request(url, &o, &r);
	EXPECT_ERROR(&r, 413, "too_large");
	resp_free(&r);

	/* A huge Content-Length is refused before any body is read. */
	fd = raw_connect(fx->port);
	T_ASSERT(fd >= 0);
	t0 = now_s();
	raw_send(fd, "POST /v1/echo HTTP/1.1\r\nHost: x\r\n"
		     "Content-Length: 10000000000\r\n\r\n");
	T_EXPECT(raw_read_all(fd, reply, sizeof(reply), 3000) == 1);
	close(fd);
	T_EXPECT(now_s() - t0 < 2.0);
	T_CONTAINS(reply, "HTTP/1.1 413");
	T_CONTAINS(reply, "\"too_large\"");

	/* The server is still fine. */
	req_simple(fx, "GET", "/healthz", NULL, &r);
	T_EQ_INT(r.status, 200);
	resp_free(&r);
	free(big);
}

static void test_too_large_413(void)
{
	with_server(NULL, body_too_large);
}

/* Bodies bigger than one read: the buffer grows as data arrives. */
static void body_large(struct fx *fx)
{
	size_t sizes[] = {300000, (size_t)1 << 20};
	char *big = malloc(((size_t)1 << 20) + 1);
	char url[256];

	T_ASSERT(big != NULL);
	snprintf(url, sizeof(url), "%s/v1/echo", fx->base);
	for (size_t i = 0; i < 2; i++) {
		size_t n = sizes[i];
		struct req_opts o;
		struct resp r;
		const char *echo;

		for (size_t k = 0; k < n; k++)
			big[k] = (char)('a' + k % 26);
		big[0] = '"';
		big[n - 1] = '"';
		big[n] = '\0';
		memset(&o, 0, sizeof(o));
		o.body = big;
		o.body_len = (long)n;
		if (i == 1) /* and through 100 Continue */
			o.headers[0] = "Expect: 100-continue";
		do_request(url, &o, &r);
		T_EQ_INT(r.status, 200);
		echo = json_string_value(json_object_get(r.json, "echo"));
		T_EXPECT(echo && strlen(echo) == n - 2 &&
			 memcmp(echo, big + 1, n - 2) == 0);
		resp_free(&r);
	}
	free(big);
}

static void test_large_body(void)
{
	struct mer_http_config cfg;

	cfg_defaults(&cfg);
	cfg.max_body = (size_t)1 << 20;
	with_server(&cfg, body_large);
}

static void body_framing(struct fx *fx)
{
	char reply[4096];
	struct resp r;
	double t0;
	int fd;

	/* Chunked uploads: 411, never parsed as a next request. */
	fd = raw_connect(fx->port);
	T_ASSERT(fd >= 0);
	raw_send(fd, "POST /v1/echo HTTP/1.1\r\nHost: x\r\n"
		     "Transfer-Encoding: chunked\r\n\r\n"
		     "7\r\n{\"a\":1}\r\n0\r\n\r\n");
	raw_read_all(fd, reply, sizeof(reply), 3000);
	close(fd);
	T_CONTAINS(reply, "HTTP/1.1 411");
	T_CONTAINS(reply, "\"length_required\"");

	/* Bad Content-Length. */
	fd = raw_connect(fx->port);
	T_ASSERT(fd >= 0);
	raw_send(fd, "POST /v1/echo HTTP/1.1\r\nHost: x\r\n"
		     "Content-Length: -5\r\n\r\n");
	raw_read_all(fd, reply, sizeof(reply), 3000);
	close(fd);
	T_CONTAINS(reply, "HTTP/1.1 400");

	/* A body that stalls: the connection is given up after the body
	 * timeout (500 ms here), and other clients are served meanwhile. */
	fd = raw_connect(fx->port);
	T_ASSERT(fd >= 0);
	t0 = now_s();
	raw_send(fd, "POST /v1/echo HTTP/1.1\r\nHost: x\r\n"
		     "Content-Length: 100\r\n\r\n{\"a\":");
	req_simple(fx, "GET", "/healthz", NULL, &r);
	T_EQ_INT(r.status, 200);
	resp_free(&r);
	T_EXPECT(raw_read_all(fd, reply, sizeof(reply), 5000) == 1);
	close(fd);
	T_EXPECT(now_s() - t0 >= 0.45);
	T_EXPECT(now_s() - t0 < 3.0);
	T_CONTAINS(reply, "HTTP/1.1 408");
	T_CONTAINS(reply, "\"timeout\"");

	/* A target that is not a path, and no Host header: JSON 400s. */
	fd = raw_connect(fx->port);
	T_ASSERT(fd >= 0);
	raw_send(fd, "GET * HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
	raw_read_all(fd, reply, sizeof(reply), 3000);
	close(fd);
	T_CONTAINS(reply, "HTTP/1.1 400");
	T_CONTAINS(reply, "Content-Type: application/json\r\n");
	T_CONTAINS(reply, "{\"error\":\"invalid_request\"");
	fd = raw_connect(fx->port);
	T_ASSERT(fd >= 0);
	raw_send(fd, "GET /healthz HTTP/1.1\r\nConnection: close\r\n\r\n");
	raw_read_all(fd, reply, sizeof(reply), 3000);
	close(fd);
	T_CONTAINS(reply, "HTTP/1.1 400");
	T_CONTAINS(reply, "Content-Type: application/json\r\n");
	T_CONTAINS(reply, "{\"error\":\"invalid_request\"");

	/* Expect: 100-continue is answered, so curl does not wait 1 s. */
	{
		struct req_opts o;
		char url[256];

		memset(&o, 0, sizeof(o));
		o.body = "{\"ping\": true}";
		o.body_len = -1;
		o.headers[0] = "Expect: 100-continue";
		snprintf(url, sizeof(url), "%s/v1/echo", fx->base);
		do_request(url, &o, &r);
		T_EQ_INT(r.status, 200);
		T_EXPECT(r.secs < 0.9);
		resp_free(&r);
	}
}

static void test_body_framing_and_timeout(void)
{
	struct mer_http_config cfg;

	cfg_defaults(&cfg);
	cfg.body_timeout_ms = 500;
	with_server(&cfg, body_framing);
}

static void body_handler_errors(struct fx *fx)
{
	struct resp r;

	req_simple(fx, "GET", "/v1/fail/notfound", NULL, &r);
	EXPECT_ERROR(&r, 404, "not_found");
	T_EXPECT(strstr(r.body.p, "secret") == NULL);
	resp_free(&r);

	req_simple(fx, "GET", "/v1/fail/unreachable", NULL, &r);
	EXPECT_ERROR(&r, 503, "unreachable");
	resp_free(&r);

	req_simple(fx, "GET", "/v1/fail/field", NULL, &r);
	EXPECT_ERROR(&r, 400, "invalid");
	T_EQ_STR(jstr(r.json, "field"), "stages[0].gpu");
	T_EQ_STR(jstr(r.json, "message"), "unknown GPU model h100x");
	resp_free(&r);

	req_simple(fx, "GET", "/v1/fail/custom", NULL, &r);
	EXPECT_ERROR(&r, 429, "quota");
	resp_free(&r);

	req_simple(fx, "GET", "/v1/fail/other", NULL, &r);
	EXPECT_ERROR(&r, 500, "io");
	resp_free(&r);
	T_EXPECT(seen_wait("GET", "/v1/fail/{code}", 503));
}

static void test_handler_errors(void)
{
	with_server(NULL, body_handler_errors);
}

static void test_status_map(void)
{
	T_EQ_INT(mer_http_status_for_err(0), 200);
	T_EQ_INT(mer_http_status_for_err(MER_EINVAL), 400);
	T_EQ_INT(mer_http_status_for_err(MER_EAUTH), 401);
	T_EQ_INT(mer_http_status_for_err(MER_EPERM), 403);
	T_EQ_INT(mer_http_status_for_err(MER_ENOTFOUND), 404);
	T_EQ_INT(mer_http_status_for_err(MER_ECOMPARE), 409);
	T_EQ_INT(mer_http_status_for_err(MER_ETOOBIG), 413);
	T_EQ_INT(mer_http_status_for_err(MER_ENOTLEADER), 503);
	T_EQ_INT(mer_http_status_for_err(MER_ETIMEDOUT), 504);
	T_EQ_INT(mer_http_status_for_err(9999), 500);
}

/* ---- tests: concurrency ----------------------------------------------- */

struct bg {
	pthread_t t;
	char url[256];
	struct resp r;
};

static void *bg_main(void *arg)
{
	struct bg *b = arg;

	do_request(b->url, NULL, &b->r);
	return NULL;
}

static int bg_start(struct bg *b, struct fx *fx, const char *path)
{
	memset(b, 0, sizeof(*b));
	snprintf(b->url, sizeof(b->url), "%s%s", fx->base, path);
	return pthread_create(&b->t, NULL, bg_main, b);
}

/* Gives up on a, held in the gated handler: released and reaped. */
static void gate_abandon(struct bg *a)
{
	gate_release();
	pthread_join(a->t, NULL);
	resp_free(&a->r);
}

/* Releases the gate, then a (held in it) and b (queued behind it) must
 * both have been answered 200. Their responses stay for the caller. */
static void gate_join_ok(struct bg *a, struct bg *b)
{
	gate_release();
	pthread_join(a->t, NULL);
	pthread_join(b->t, NULL);
	T_EQ_INT(a->r.status, 200);
	T_EQ_INT(b->r.status, 200);
}

static int wait_busy(struct fx *fx, unsigned busy, unsigned queued)
{
	for (int i = 0; i < 500; i++) {
		struct mer_http_stats st;

		mer_http_server_stats(fx->srv, &st);
		if (st.busy >= busy && st.queued >= queued)
			return 1;
		sleep_ms(10);
	}
	return 0;
}

static void body_parallel(struct fx *fx)
{
	struct bg a, b;
	struct resp r;
	double t0 = now_s();

	T_ASSERT(bg_start(&a, fx, "/v1/sleep?ms=1500") == 0);
	if (bg_start(&b, fx, "/v1/sleep?ms=1500") != 0) {
		pthread_join(a.t, NULL);
		resp_free(&a.r);
		T_ASSERT(0);
	}
	T_EXPECT(wait_busy(fx, 2, 0));
	/* Both sleepers hold workers; others are still served at once. */
	req_simple(fx, "GET", "/healthz", NULL, &r);
	T_EQ_INT(r.status, 200);
	T_EXPECT(r.secs < 0.5);
	resp_free(&r);
	pthread_join(a.t, NULL);
	pthread_join(b.t, NULL);
	T_EQ_INT(a.r.status, 200);
	T_EQ_INT(b.r.status, 200);
	/* In parallel: about 1.5 s, not 3. */
	T_EXPECT(now_s() - t0 < 2.7);
	resp_free(&a.r);
	resp_free(&b.r);
}

static void test_parallel_slow_handlers(void)
{
	with_server(NULL, body_parallel);
}

static void body_one_worker(struct fx *fx)
{
	struct bg a, b;
	struct resp r;
	char ra[64];

	/* The only worker is held by a gated handler... */
	gate_reset();
	T_ASSERT(bg_start(&a, fx, "/v1/gate") == 0);
	T_EXPECT(wait_count(&gate_entered, 1, 5000));
	/* ...yet what needs no worker is answered at once by the I/O
	 * thread. */
	req_simple(fx, "GET", "/v1/nothing", NULL, &r);
	EXPECT_ERROR(&r, 404, "not_found");
	T_EXPECT(r.secs < 0.5);
	resp_free(&r);
	/* One request may wait in the queue; the next is told to retry. */
	if (bg_start(&b, fx, "/healthz") != 0) {
		gate_abandon(&a);
		T_ASSERT(0);
	}
	T_EXPECT(wait_busy(fx, 1, 1));
	req_simple(fx, "GET", "/healthz", NULL, &r);
	EXPECT_ERROR(&r, 503, "busy");
	T_EQ_STR(resp_header(&r, "Retry-After", ra, sizeof(ra)), "1");
	resp_free(&r);
	gate_join_ok(&a, &b);
	resp_free(&a.r);
	resp_free(&b.r);
}

static void test_queue_full_503(void)
{
	with_one_worker(1, body_one_worker);
}

static void body_keepalive(struct fx *fx)
{
	CURL *c = curl_easy_init();
	struct req_opts o;
	struct resp r;
	char url[256];

	T_ASSERT(c != NULL);
	memset(&o, 0, sizeof(o));
	o.reuse = c;
	o.body_len = -1;
	snprintf(url, sizeof(url), "%s/healthz", fx->base);
	do_request(url, &o, &r);
	T_EQ_INT(r.status, 200);
	T_EQ_INT(r.connects, 1);
	resp_free(&r);

	/* 204, 404 (with an unread body), 405 and 400 all leave the
	 * connection usable: every answer has a length. */
	o.method = "DELETE";
	snprintf(url, sizeof(url), "%s/v1/jobs/j1", fx->base);
	do_request(url, &o, &r);
	T_EQ_INT(r.status, 204);
	T_EQ_INT(r.connects, 0);
	resp_free(&r);
	o.method = "POST";
	o.body = "{\"a\": 1}";
	snprintf(url, sizeof(url), "%s/nowhere", fx->base);
	do_request(url, &o, &r);
	T_EQ_INT(r.status, 404);
	T_EQ_INT(r.connects, 0);
	resp_free(&r);
	o.method = "POST";
	o.body = "{oops";
	snprintf(url, sizeof(url), "%s/v1/echo", fx->base);
	do_request(url, &o, &r);
	T_EQ_INT(r.status, 400);
	T_EQ_INT(r.connects, 0);
	resp_free(&r);
	o.method = NULL;
	o.body = NULL;
	snprintf(url, sizeof(url), "%s/v1/jobs/j1", fx->base);
	do_request(url, &o, &r);
	T_EQ_INT(r.status, 200);
	T_EQ_INT(r.connects, 0);
	resp_free(&r);
	curl_easy_cleanup(c);
}

static void test_keepalive(void)
{
	with_server(NULL, body_keepalive);
}

/* ---- tests: stop -------------------------------------------------------- */

struct stopper {
	pthread_t t;
	struct mer_http_server *srv;
	int done;
	pthread_mutex_t mu;
};

static void *stop_main(void *arg)
{
	struct stopper *s = arg;

	mer_http_server_stop(s->srv);
	pthread_mutex_lock(&s->mu);
	s->done = 1;
	pthread_mutex_unlock(&s->mu);
	return NULL;
}

static int stopper_done(struct stopper *s)
{
	int d;

	pthread_mutex_lock(&s->mu);
	d = s->done;
	pthread_mutex_unlock(&s->mu);
	return d;
}

static void body_stop(struct fx *fx)
{
	struct bg a;
	struct stopper s;
	char buf[256];
	int idle, partial, fd;
	double t0;

	gate_reset();
	T_ASSERT(bg_start(&a, fx, "/v1/gate") == 0);
	T_EXPECT(wait_count(&gate_entered, 1, 5000));
	idle = raw_connect(fx->port);
	partial = raw_connect(fx->port);
	T_EXPECT(idle >= 0 && partial >= 0);
	if (partial >= 0)
		raw_send(partial, "GET /healthz HTTP/1.1\r\nHost: x\r\n");
	sleep_ms(50);

	memset(&s, 0, sizeof(s));
	pthread_mutex_init(&s.mu, NULL);
	s.srv = fx->srv;
	t0 = now_s();
	if (pthread_create(&s.t, NULL, stop_main, &s) != 0) {
		gate_abandon(&a);
		T_ASSERT(0);
	}
	/* Clients are cut off at once, though the handler still runs. */
	pthread_join(a.t, NULL);
	T_EXPECT(a.r.cc != CURLE_OK);
	T_EXPECT(now_s() - t0 < 2.0);
	if (idle >= 0) {
		T_EXPECT(raw_read_all(idle, buf, sizeof(buf), 3000) == 1);
		T_EQ_STR(buf, "");
		close(idle);
	}
	if (partial >= 0) {
		T_EXPECT(raw_read_all(partial, buf, sizeof(buf), 3000) == 1);
		close(partial);
	}
	/* stop waits for the running handler. */
	T_EXPECT(!stopper_done(&s));
	T_EQ_INT(gate_count(&gate_returned), 0);
	gate_release();
	pthread_join(s.t, NULL);
	T_EXPECT(stopper_done(&s));
	T_EQ_INT(gate_count(&gate_returned), 1);
	pthread_mutex_destroy(&s.mu);
	/* The client went away: recorded as 499. */
	T_EXPECT(seen_wait("GET", "/v1/gate", 499));
	/* Nobody listens any more. */
	fd = raw_connect(fx->port);
	T_EXPECT(fd < 0);
	if (fd >= 0)
		close(fd);
	mer_http_server_stop(fx->srv); /* idempotent */
	resp_free(&a.r);
}

static void test_stop_with_clients(void)
{
	with_server(NULL, body_stop);
}

/* Clients keep sending while the server stops: requests are cut off in
 * every state (routing, body read, queue, handler) without a crash or a
 * leak (this is the case the sanitizer build is for). */
struct hammer {
	pthread_t t;
	char base[64];
	int id;
	int ok;
};

static void *hammer_main(void *arg)
{
	struct hammer *h = arg;
	static const char *const paths[] = {"/healthz", "/v1/echo",
					    "/v1/sleep?ms=5", "/v1/nope"};

	for (int i = 0; i < 2000; i++) {
		const char *path = paths[(i + h->id) % 4];
		struct req_opts o;
		struct resp r;
		char url[256];

		memset(&o, 0, sizeof(o));
		o.body_len = -1;
		if (strcmp(path, "/v1/echo") == 0)
			o.body = "{\"k\": [1, 2, 3]}";
		snprintf(url, sizeof(url), "%s%s", h->base, path);
		do_request(url, &o, &r);
		if (r.cc == CURLE_OK) {
			h->ok++;
		} else if (r.cc == CURLE_COULDNT_CONNECT) {
			resp_free(&r);
			break; /* stopped */
		}
		resp_free(&r);
	}
	return NULL;
}

static void body_stop_under_load(struct fx *fx)
{
	struct hammer h[8];
	int started = 0, ok = 0;

	for (int i = 0; i < 8; i++) {
		memset(&h[i], 0, sizeof(h[i]));
		snprintf(h[i].base, sizeof(h[i].base), "%s", fx->base);
		h[i].id = i;
		if (pthread_create(&h[i].t, NULL, hammer_main, &h[i]) != 0)
			break;
		started++;
	}
	sleep_ms(400);
	mer_http_server_stop(fx->srv);
	for (int i = 0; i < started; i++) {
		pthread_join(h[i].t, NULL);
		ok += h[i].ok;
	}
	T_EQ_INT(started, 8);
	T_EXPECT(ok > 0);
}

static void test_stop_under_load(void)
{
	with_server(NULL, body_stop_under_load);
}

/* ---- tests: TLS --------------------------------------------------------- */

/* Writes a self-signed EC certificate for 127.0.0.1 and its key. */
static int make_cert(const char *cert_path, const char *key_path)
{
	EVP_PKEY *pkey = EVP_EC_gen("P-256");
	X509 *x = X509_new();
	X509_EXTENSION *ext = NULL;
	X509V3_CTX ctx;
	FILE *f = NULL;
	int ok = 0;

	if (!pkey || !x)
		goto out;
	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), -60);
	X509_gmtime_adj(X509_getm_notAfter(x), 3600);
	X509_set_pubkey(x, pkey);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN", MBSTRING_ASC,
				   (const unsigned char *)"127.0.0.1", -1, -1,
				   0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
	ext = X509V3_EXT_conf_nid(NULL, &ctx, NID_subject_alt_name,
				  "IP:127.0.0.1");
	if (!ext || !X509_add_ext(x, ext, -1))
		goto out;
	if (!X509_sign(x, pkey, EVP_sha256()))
		goto out;
	f = fopen(cert_path, "w");
	if (!f || !PEM_write_X509(f, x))
		goto out;
	fclose(f);
	f = fopen(key_path, "w");
	if (!f || !PEM_write_PrivateKey(f, pkey, NULL, NULL, 0, NULL, NULL))
		goto out;
	chmod(key_path, 0600);
	ok = 1;
out:
	if (f)
		fclose(f);
	X509_EXTENSION_free(ext);
	X509_free(x);
	EVP_PKEY_free(pkey);
	return ok;
}

static char tls_dir[256];
static char tls_cert[300];
static char tls_key[300];

static void body_tls(struct fx *fx)
{
	struct resp r;
	char url[256];

	fx->cafile = tls_cert;
	req_simple(fx, "GET", "/healthz", NULL, &r);
	T_EQ_INT(r.cc, CURLE_OK);
	T_EQ_INT(r.status, 200);
	T_EQ_STR(r.body.p, "ok\n");
	resp_free(&r);

	req_simple(fx, "POST", "/v1/echo", "{\"tls\": true}", &r);
	T_EQ_INT(r.status, 200);
	T_EXPECT(json_is_true(
	    json_object_get(json_object_get(r.json, "echo"), "tls")));
	resp_free(&r);

	/* Without the CA the client refuses the certificate. */
	snprintf(url, sizeof(url), "%s/healthz", fx->base);
	do_request(url, NULL, &r);
	T_EXPECT(r.cc != CURLE_OK);
	resp_free(&r);

	/* Plain HTTP to the TLS port gets nothing useful, and no crash. */
	snprintf(url, sizeof(url), "http://127.0.0.1:%d/healthz", fx->port);
	do_request(url, NULL, &r);
	T_EXPECT(r.status != 200);
	resp_free(&r);

	/* A client that starts a handshake and never finishes it is cut
	 * off at header_timeout_ms (400 here). */
	{
		char reply[256];
		double t0 = now_s();
		int fd = raw_connect(fx->port);

		T_ASSERT(fd >= 0);
		raw_send(fd, "\x16\x03\x01\x02\x00\x01");
		T_EXPECT(raw_read_all(fd, reply, sizeof(reply), 3000) == 1);
		T_EXPECT(now_s() - t0 >= 0.35);
		T_EXPECT(now_s() - t0 < 1.5);
		close(fd);
	}

	/* Still serving. */
	req_simple(fx, "GET", "/healthz", NULL, &r);
	T_EQ_INT(r.status, 200);
	resp_free(&r);
}

static void test_tls_roundtrip(void)
{
	struct mer_http_config cfg;
	char *d;

	snprintf(tls_dir, sizeof(tls_dir), "%s/meridian-http-XXXXXX",
		 getenv("TMPDIR") ? getenv("TMPDIR") : "/tmp");
	d = mkdtemp(tls_dir);
	T_ASSERT(d != NULL);
	snprintf(tls_cert, sizeof(tls_cert), "%s/cert.pem", tls_dir);
	snprintf(tls_key, sizeof(tls_key), "%s/key.pem", tls_dir);
	if (make_cert(tls_cert, tls_key)) {
		cfg_defaults(&cfg);
		cfg.url = "https://127.0.0.1:0";
		cfg.header_timeout_ms = 400;
		cfg.tls_cert_file = tls_cert;
		cfg.tls_key_file = tls_key;
		with_server(&cfg, body_tls);
	} else {
		t_fail(__FILE__, __LINE__, "could not make a certificate");
	}
	unlink(tls_cert);
	unlink(tls_key);
	rmdir(tls_dir);
}

/* ---- tests: configuration ----------------------------------------------- */

static int h_nop(struct mer_http_req *req, struct mer_http_res *res, void *a)
{
	(void)req;
	(void)res;
	(void)a;
	return 0;
}

static void test_config_errors(void)
{
	struct mer_http_config cfg;
	struct mer_http_server *srv = NULL;
	struct mer_http_route rt = {"GET", "/v1/x/{id}", h_nop, NULL, 0};
	char err[256];

	cfg_defaults(&cfg);
	cfg.url = "ftp://127.0.0.1:0";
	T_EQ_INT(mer_http_server_new(&cfg, &srv, err, sizeof(err)), MER_EINVAL);
	T_EXPECT(srv == NULL);

	cfg.url = "http://127.0.0.1:0";
	cfg.tls_cert_file = "/nonexistent/cert.pem";
	cfg.tls_key_file = "/nonexistent/key.pem";
	T_EQ_INT(mer_http_server_new(&cfg, &srv, err, sizeof(err)), MER_EINVAL);
	cfg.url = "https://127.0.0.1:0";
	T_EQ_INT(mer_http_server_new(&cfg, &srv, err, sizeof(err)), MER_EIO);
	T_CONTAINS(err, "/nonexistent/cert.pem");
	cfg.tls_key_file = NULL;
	T_EQ_INT(mer_http_server_new(&cfg, &srv, err, sizeof(err)), MER_EINVAL);

	cfg_defaults(&cfg);
	T_OK(mer_http_server_new(&cfg, &srv, err, sizeof(err)));
	T_EQ_INT(mer_http_server_port(srv), 0);
	T_OK(mer_http_server_add_route(srv, &rt));
	T_EQ_INT(mer_http_server_add_route(srv, &rt), MER_EEXIST);
	/* The same shape with another parameter name is the same route. */
	rt.pattern = "/v1/x/{name}";
	T_EQ_INT(mer_http_server_add_route(srv, &rt), MER_EEXIST);
	rt.method = "DELETE";
	T_OK(mer_http_server_add_route(srv, &rt));
	rt.method = "get";
	T_EQ_INT(mer_http_server_add_route(srv, &rt), MER_EINVAL);
	rt.method = "GET";
	{
		static const char *const bad[] = {
		    "v1/x",	"/v1//x",   "/v1/x/", "/v1/{}",	    "/v1/{a b}",
		    "/v1/{a}b", "/v1/a{b}", "/v1/{a", "/v1/{a}:{b}"};

		for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
			rt.pattern = bad[i];
			if (mer_http_server_add_route(srv, &rt) != MER_EINVAL)
				t_fail(__FILE__, __LINE__,
				       "pattern %s accepted", bad[i]);
		}
	}
	T_OK(mer_http_server_start(srv));
	T_EXPECT(mer_http_server_port(srv) > 0);
	rt.pattern = "/later";
	T_EQ_INT(mer_http_server_add_route(srv, &rt), MER_ESTATE);
	T_EQ_INT(mer_http_server_start(srv), MER_ESTATE);
	mer_http_server_free(srv);

	/* A server that never started frees cleanly too. */
	T_OK(mer_http_server_new(&cfg, &srv, err, sizeof(err)));
	mer_http_server_free(srv);
	mer_http_server_free(NULL);
}

static void test_port_in_use(void)
{
	struct mer_http_config cfg;
	struct mer_http_server *a = NULL, *b = NULL;
	char url[64];

	cfg_defaults(&cfg);
	T_OK(mer_http_server_new(&cfg, &a, NULL, 0));
	if (mer_http_server_start(a) != 0) {
		mer_http_server_free(a);
		T_ASSERT(0);
	}
	/* A second server on the same address cannot bind it. */
	snprintf(url, sizeof(url), "http://127.0.0.1:%d",
		 mer_http_server_port(a));
	cfg.url = url;
	if (mer_http_server_new(&cfg, &b, NULL, 0) == 0) {
		T_EXPECT(mer_http_server_start(b) != 0);
		mer_http_server_free(b);
	}
	mer_http_server_free(a);

	/* A port another socket listens on: start fails, cleanly. */
	{
		struct sockaddr_in sa;
		socklen_t sl = sizeof(sa);
		int lfd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);

		T_ASSERT(lfd >= 0);
		memset(&sa, 0, sizeof(sa));
		sa.sin_family = AF_INET;
		sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
		if (bind(lfd, (struct sockaddr *)&sa, sizeof(sa)) != 0 ||
		    listen(lfd, 1) != 0 ||
		    getsockname(lfd, (struct sockaddr *)&sa, &sl) != 0) {
			close(lfd);
			T_ASSERT(0);
		}
		snprintf(url, sizeof(url), "http://127.0.0.1:%d",
			 ntohs(sa.sin_port));
		cfg.url = url;
		b = NULL;
		if (mer_http_server_new(&cfg, &b, NULL, 0) == 0) {
			T_EQ_INT(mer_http_server_start(b), MER_EIO);
			T_EQ_INT(mer_http_server_start(b), MER_ESTATE);
			mer_http_server_free(b);
		} else {
			t_fail(__FILE__, __LINE__, "server_new failed");
		}
		close(lfd);
	}
}

/* ---- tests: our own HTTP/1.1 server's limits ---------------------------- */

/* Counts occurrences of needle in s. */
static int count_of(const char *s, const char *needle)
{
	int n = 0;

	while ((s = strstr(s, needle)) != NULL) {
		n++;
		s += strlen(needle);
	}
	return n;
}

static int wait_conns(struct fx *fx, unsigned want)
{
	for (int i = 0; i < 300; i++) {
		struct mer_http_stats st;

		mer_http_server_stats(fx->srv, &st);
		if (st.connections == want)
			return 1;
		sleep_ms(10);
	}
	return 0;
}

static void body_slowloris(struct fx *fx)
{
	static const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n"
				  "X-Slow: aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
				  "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n";
	char reply[2048];
	double t0, cut = 0;
	int fd, served = 0, fine = 1;

	fd = raw_connect(fx->port);
	T_ASSERT(fd >= 0);
	t0 = now_s();
	/* One byte every 40 ms, while another client is served. */
	for (size_t i = 0; i < sizeof(req) - 1 && now_s() - t0 < 3.0; i++) {
		struct pollfd p = {fd, POLLIN, 0};
		struct resp r;
		char b[2] = {req[i], 0};

		if (raw_send(fd, b) != 0 || poll(&p, 1, 40) > 0) {
			cut = now_s() - t0;
			break;
		}
		req_simple(fx, "GET", "/healthz", NULL, &r);
		served++;
		if (r.status != 200 || r.secs > 0.2)
			fine = 0;
		resp_free(&r);
	}
	T_EXPECT(cut > 0);
	T_EXPECT(raw_read_all(fd, reply, sizeof(reply), 3000) == 1);
	close(fd);
	/* header_timeout_ms is 300 here. */
	T_EXPECT(cut >= 0.25);
	T_EXPECT(cut < 1.0);
	T_EXPECT(served >= 3);
	T_EXPECT(fine);
	T_CONTAINS(reply, "HTTP/1.1 408");
	T_CONTAINS(reply, "Content-Type: application/json\r\n");
	T_CONTAINS(reply, "\"error\":\"timeout\"");
	T_CONTAINS(reply, "Connection: close\r\n");
	T_EXPECT(seen_wait("OTHER", "unmatched", 408));

	/* A connection that sends nothing is closed silently at the same
	 * limit. */
	fd = raw_connect(fx->port);
	T_ASSERT(fd >= 0);
	t0 = now_s();
	T_EXPECT(raw_read_all(fd, reply, sizeof(reply), 3000) == 1);
	T_EXPECT(now_s() - t0 >= 0.25 && now_s() - t0 < 1.0);
	T_EQ_STR(reply, "");
	close(fd);
}

static void test_slowloris_408(void)
{
	struct mer_http_config cfg;

	cfg_defaults(&cfg);
	cfg.header_timeout_ms = 300;
	with_server(&cfg, body_slowloris);
}

static void body_idle(struct fx *fx)
{
	char reply[2048];
	double t0;
	int fd = raw_connect(fx->port);

	T_ASSERT(fd >= 0);
	raw_send(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
	T_EQ_INT(raw_read_for(fd, reply, sizeof(reply), 3000, "ok\n"), 2);
	T_CONTAINS(reply, "HTTP/1.1 200");
	/* Kept alive for the next request... */
	raw_send(fd, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
	T_EQ_INT(raw_read_for(fd, reply, sizeof(reply), 3000, "ok\n"), 2);
	/* ...then closed, without a word, after idle_timeout_ms (300). */
	t0 = now_s();
	T_EXPECT(raw_read_all(fd, reply, sizeof(reply), 3000) == 1);
	T_EXPECT(now_s() - t0 >= 0.25);
	T_EXPECT(now_s() - t0 < 1.0);
	T_EQ_STR(reply, "");
	close(fd);
}

static void test_idle_timeout(void)
{
	struct mer_http_config cfg;

	cfg_defaults(&cfg);
	cfg.idle_timeout_ms = 300;
	with_server(&cfg, body_idle);
}

/* A request whose head is about total bytes, in nhdr header lines. */
static char *big_head(size_t total, int nhdr)
{
	char *big = malloc(total + 256);
	size_t n, per;

	if (!big)
		return NULL;
	n = (size_t)snprintf(big, total + 256,
			     "GET /healthz HTTP/1.1\r\nHost: x\r\n"
			     "Connection: close\r\n");
	per = (total - n - 2) / (size_t)nhdr;
	for (int i = 0; i < nhdr; i++) {
		int w = snprintf(big + n, total + 256 - n, "X-H%04d: ", i);

		n += (size_t)w;
		for (size_t k = (size_t)w + 2; k < per; k++)
			big[n++] = 'v';
		big[n++] = '\r';
		big[n++] = '\n';
	}
	big[n++] = '\r';
	big[n++] = '\n';
	big[n] = '\0';
	return big;
}

static void body_header_limits(struct fx *fx)
{
	char reply[4096];
	char *big;
	int rv;

	/* 7.5 KiB of head passes the default 8 KiB limit. */
	big = big_head(7680, 60);
	T_ASSERT(big != NULL);
	T_EXPECT(strlen(big) <= 7680);
	rv = raw_ask(fx->port, big, reply, sizeof(reply));
	free(big);
	T_ASSERT(rv >= 0);
	T_CONTAINS(reply, "HTTP/1.1 200");

	/* 8.8 KiB does not: 431, as JSON. */
	big = big_head(9000, 60);
	T_ASSERT(big != NULL);
	rv = raw_ask(fx->port, big, reply, sizeof(reply));
	free(big);
	T_ASSERT(rv >= 0);
	T_CONTAINS(reply, "HTTP/1.1 431");
	T_CONTAINS(reply, "Content-Type: application/json\r\n");
	T_CONTAINS(reply, "\"error\":\"request_header_too_large\"");

	/* Nor do 120 small header fields (the limit is 100). */
	big = big_head(3000, 120);
	T_ASSERT(big != NULL);
	rv = raw_ask(fx->port, big, reply, sizeof(reply));
	free(big);
	T_ASSERT(rv >= 0);
	T_CONTAINS(reply, "HTTP/1.1 431");
	T_CONTAINS(reply, "\"error\":\"request_header_too_large\"");
	T_EXPECT(seen_wait("OTHER", "unmatched", 431));
}

static void test_header_limits_431(void)
{
	with_server(NULL, body_header_limits);
}

static void body_max_conns(struct fx *fx)
{
	int fds[3], extra;
	char reply[2048];
	struct resp r;

	for (int i = 0; i < 3; i++) {
		fds[i] = raw_connect(fx->port);
		T_EXPECT(fds[i] >= 0);
	}
	T_EXPECT(wait_conns(fx, 3));
	/* The fourth is told 503 at once and closed. */
	extra = raw_connect(fx->port);
	if (extra >= 0) {
		T_EXPECT(raw_read_all(extra, reply, sizeof(reply), 3000) == 1);
		close(extra);
		T_CONTAINS(reply, "HTTP/1.1 503");
		T_CONTAINS(reply, "Content-Type: application/json\r\n");
		T_CONTAINS(reply, "\"error\":\"busy\"");
		T_CONTAINS(reply, "Retry-After: 1\r\n");
	}
	req_simple(fx, "GET", "/healthz", NULL, &r);
	T_EXPECT(r.status == 503 || r.cc != CURLE_OK);
	resp_free(&r);
	/* Once one goes, there is room again. */
	close(fds[0]);
	fds[0] = -1;
	T_EXPECT(wait_conns(fx, 2));
	req_simple(fx, "GET", "/healthz", NULL, &r);
	T_EQ_INT(r.status, 200);
	resp_free(&r);
	for (int i = 1; i < 3; i++)
		if (fds[i] >= 0)
			close(fds[i]);
	T_EXPECT(wait_conns(fx, 0));
}

static void test_max_connections_503(void)
{
	struct mer_http_config cfg;

	cfg_defaults(&cfg);
	cfg.max_connections = 3;
	with_server(&cfg, body_max_conns);
}

static void body_malformed(struct fx *fx)
{
	static const struct {
		const char *req;
		const char *status;
		const char *code;
	} cases[] = {
	    {"GET /healthz\r\n\r\n", "400", "invalid_request"},
	    {"GET  /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "400",
	     "invalid_request"},
	    {"GET /healthz HTTP/1.1 \r\nHost: x\r\n\r\n", "400",
	     "invalid_request"},
	    {"G(T /healthz HTTP/1.1\r\nHost: x\r\n\r\n", "400",
	     "invalid_request"},
	    {"GET /heal\x01thz HTTP/1.1\r\nHost: x\r\n\r\n", "400",
	     "invalid_request"},
	    {"GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n", "505", "http_version"},
	    {"GET /healthz HTTP/1.2\r\nHost: x\r\n\r\n", "505", "http_version"},
	    {"GET /healthz HTTP/0.9\r\nHost: x\r\n\r\n", "505", "http_version"},
	    {"GET /healthz HTTP/x\r\nHost: x\r\n\r\n", "400",
	     "invalid_request"},
	    {"GET /healthz FTP/1.1\r\nHost: x\r\n\r\n", "400",
	     "invalid_request"},
	    {"GET /healthz HTTP/1.1\r\n\r\n", "400", "invalid_request"},
	    {"GET /healthz HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", "400",
	     "invalid_request"},
	    {"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n folded\r\n\r\n",
	     "400", "invalid_request"},
	    {"GET /healthz HTTP/1.1\r\nHost: x\r\nBad Name: v\r\n\r\n", "400",
	     "invalid_request"},
	    {"GET /healthz HTTP/1.1\r\nHost : x\r\n\r\n", "400",
	     "invalid_request"},
	    {"GET /healthz HTTP/1.1\r\nHost: x\r\nNoColon\r\n\r\n", "400",
	     "invalid_request"},
	    {"GET /healthz HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", "400",
	     "invalid_request"},
	    {"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n"
	     "Content-Length: 2\r\n\r\n{}",
	     "400", "invalid_request"},
	    {"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: "
	     "+2\r\n\r\n{}",
	     "400", "invalid_request"},
	    {"POST /v1/echo HTTP/1.1\r\nHost: x\r\nContent-Length: 2, 2\r\n\r\n"
	     "{}",
	     "400", "invalid_request"},
	    {"GET /healthz HTTP/1.1\r\nHost: x\r\nExpect: magic\r\n\r\n", "417",
	     "expectation_failed"},
	};
	char reply[4096], want[64];

	for (size_t i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		int fd = raw_connect(fx->port);

		T_ASSERT(fd >= 0);
		raw_send(fd, cases[i].req);
		/* Every one of these closes the connection. */
		if (raw_read_all(fd, reply, sizeof(reply), 3000) != 1)
			t_fail(__FILE__, __LINE__, "case %zu: no close", i);
		close(fd);
		snprintf(want, sizeof(want), "HTTP/1.1 %s ", cases[i].status);
		if (strncmp(reply, want, strlen(want)) != 0 ||
		    !strstr(reply, "Content-Type: application/json\r\n") ||
		    !strstr(reply, cases[i].code) || strstr(reply, "<"))
			t_fail(__FILE__, __LINE__, "case %zu: %s", i, reply);
	}

	/* HTTP/1.0 needs no Host, and is not kept alive unless asked. */
	{
		int fd = raw_connect(fx->port);

		T_ASSERT(fd >= 0);
		raw_send(fd, "GET /healthz HTTP/1.0\r\n\r\n");
		T_EXPECT(raw_read_all(fd, reply, sizeof(reply), 3000) == 1);
		close(fd);
		T_CONTAINS(reply, "HTTP/1.1 200");
		T_CONTAINS(reply, "Connection: close\r\n");
		fd = raw_connect(fx->port);
		T_ASSERT(fd >= 0);
		raw_send(fd, "GET /healthz HTTP/1.0\r\n"
			     "Connection: keep-alive\r\n\r\n");
		T_EQ_INT(raw_read_for(fd, reply, sizeof(reply), 3000, "ok\n"),
			 2);
		T_CONTAINS(reply, "Connection: keep-alive\r\n");
		raw_send(fd, "GET /v1/jobs/k HTTP/1.0\r\n\r\n");
		T_EXPECT(raw_read_all(fd, reply, sizeof(reply), 3000) == 1);
		T_CONTAINS(reply, "\"id\":\"k\"");
		close(fd);
	}
	/* Still serving. */
	{
		struct resp r;

		req_simple(fx, "GET", "/healthz", NULL, &r);
		T_EQ_INT(r.status, 200);
		resp_free(&r);
	}
}

static void test_malformed_requests(void)
{
	with_server(NULL, body_malformed);
}

static void body_pipelined(struct fx *fx)
{
	char reply[8192];
	const char *a, *b, *c;
	int fd = raw_connect(fx->port);

	T_ASSERT(fd >= 0);
	/* Three requests in one write: a slow one first, a POST with a body,
	 * then one that closes. Answers come in order. */
	raw_send(fd, "GET /v1/sleep?ms=150 HTTP/1.1\r\nHost: x\r\n\r\n"
		     "POST /v1/echo HTTP/1.1\r\nHost: x\r\n"
		     "Content-Length: 9\r\n\r\n{\"n\": 2}\n"
		     "GET /v1/jobs/third HTTP/1.1\r\nHost: x\r\n"
		     "Connection: close\r\n\r\n");
	T_EXPECT(raw_read_all(fd, reply, sizeof(reply), 5000) == 1);
	close(fd);
	T_EQ_INT(count_of(reply, "HTTP/1.1 200"), 3);
	a = strstr(reply, "\"slept\":150");
	b = strstr(reply, "\"n\":2");
	c = strstr(reply, "\"id\":\"third\"");
	T_EXPECT(a && b && c && a < b && b < c);

	/* HEAD: the GET's headers and length, no body. */
	fd = raw_connect(fx->port);
	T_ASSERT(fd >= 0);
	raw_send(fd, "HEAD /v1/jobs/xyz HTTP/1.1\r\nHost: x\r\n\r\n"
		     "GET /v1/jobs/xyz HTTP/1.1\r\nHost: x\r\n"
		     "Connection: close\r\n\r\n");
	T_EXPECT(raw_read_all(fd, reply, sizeof(reply), 3000) == 1);
	close(fd);
	T_EQ_INT(count_of(reply, "HTTP/1.1 200"), 2);
	T_EQ_INT(count_of(reply, "\"id\":\"xyz\""), 1);
	{
		/* Both answers announce the same length. */
		const char *cl = strstr(reply, "Content-Length: ");
		const char *eol = cl ? strstr(cl, "\r\n") : NULL;
		char line[64];

		T_ASSERT(eol != NULL && eol - cl < 60);
		snprintf(line, sizeof(line), "%.*s", (int)(eol - cl + 2), cl);
		T_EXPECT(strcmp(line, "Content-Length: 0\r\n") != 0);
		T_EQ_INT(count_of(reply, line), 2);
	}
	/* The HEAD answer ends at its blank line: the GET follows. */
	T_CONTAINS(reply, "\r\n\r\nHTTP/1.1 200");
	T_EXPECT(seen_wait("HEAD", "/v1/jobs/{id}", 200));
}

static void test_pipelined_and_head(void)
{
	with_server(NULL, body_pipelined);
}

/* ---- tests: review findings (fairness, client gone, lifecycle) -------- */

/*
 * One connection pipelines instantly answered requests (404s) as fast as
 * it can and reads the answers as fast as they come: the I/O thread must
 * still serve everybody else (a per-turn cap), not loop on that one
 * connection for as long as it keeps sending.
 */
struct flood {
	int fd;
	int stop;
	double until;
	long sent;
	long got;
};

static int flood_stopped(struct flood *f)
{
	return __atomic_load_n(&f->stop, __ATOMIC_SEQ_CST) ||
	       now_s() > f->until;
}

static void *flood_writer(void *arg)
{
	static const char one[] = "GET /nope HTTP/1.1\r\nHost: x\r\n\r\n";
	struct flood *f = arg;
	size_t n = (sizeof(one) - 1) * 512;
	char *batch = malloc(n);

	if (!batch)
		return NULL;
	for (size_t i = 0; i < 512; i++)
		memcpy(batch + i * (sizeof(one) - 1), one, sizeof(one) - 1);
	while (!flood_stopped(f)) {
		struct pollfd p = {f->fd, POLLOUT, 0};
		ssize_t w;

		if (poll(&p, 1, 50) <= 0)
			continue;
		w = send(f->fd, batch, n, MSG_NOSIGNAL | MSG_DONTWAIT);
		if (w < 0 && errno != EAGAIN && errno != EINTR)
			break;
		if (w > 0)
			f->sent += w;
		/* Keep whole requests: finish a partial batch. */
		while (w > 0 && (size_t)w < n && !flood_stopped(f)) {
			ssize_t w2 =
			    send(f->fd, batch + w, n - (size_t)w, MSG_NOSIGNAL);

			if (w2 <= 0)
				break;
			w += w2;
		}
	}
	free(batch);
	return NULL;
}

static void *flood_reader(void *arg)
{
	struct flood *f = arg;
	char tmp[65536];

	while (!flood_stopped(f)) {
		struct pollfd p = {f->fd, POLLIN, 0};
		ssize_t r;

		if (poll(&p, 1, 50) <= 0)
			continue;
		r = recv(f->fd, tmp, sizeof(tmp), MSG_DONTWAIT);
		if (r == 0 || (r < 0 && errno != EAGAIN && errno != EINTR))
			break;
		if (r > 0)
			f->got += r;
	}
	return NULL;
}

static void body_pipeline_flood(struct fx *fx)
{
	struct flood f;
	pthread_t wt, rt;
	double worst = 0;
	int ok = 1, served = 0;

	memset(&f, 0, sizeof(f));
	f.fd = raw_connect(fx->port);
	T_ASSERT(f.fd >= 0);
	f.until = now_s() + 3.0;
	if (pthread_create(&wt, NULL, flood_writer, &f) != 0) {
		close(f.fd);
		T_ASSERT(0);
	}
	if (pthread_create(&rt, NULL, flood_reader, &f) != 0) {
		__atomic_store_n(&f.stop, 1, __ATOMIC_SEQ_CST);
		pthread_join(wt, NULL);
		close(f.fd);
		T_ASSERT(0);
	}
	sleep_ms(200);
	for (int i = 0; i < 5 && !flood_stopped(&f); i++) {
		struct resp r;

		req_simple(fx, "GET", "/healthz", NULL, &r);
		if (r.status != 200)
			ok = 0;
		if (r.secs > worst)
			worst = r.secs;
		served++;
		resp_free(&r);
	}
	__atomic_store_n(&f.stop, 1, __ATOMIC_SEQ_CST);
	pthread_join(wt, NULL);
	pthread_join(rt, NULL);
	close(f.fd);
	/* The flood did flow: answers came back while it ran. */
	T_EXPECT(f.got > 0);
	T_EQ_INT(served, 5);
	T_EXPECT(ok);
	if (worst > 0.5)
		t_fail(__FILE__, __LINE__,
		       "a pipelining connection held the I/O thread: another "
		       "client waited %.2f s",
		       worst);
}

static void test_pipeline_flood_fair(void)
{
	with_server(NULL, body_pipeline_flood);
}

/*
 * A client that closes its connection while its request waits for a worker
 * or runs: the server notices at once (the connection is gone from the
 * stats), a request still queued never reaches its handler, and both are
 * observed as 499 (the contract in http.h).
 */
static void body_client_gone(struct fx *fx)
{
	int a, b;
	double t0;

	gate_reset();
	a = raw_connect(fx->port);
	T_ASSERT(a >= 0);
	raw_send(a, "GET /v1/gate HTTP/1.1\r\nHost: x\r\n\r\n");
	T_EXPECT(wait_count(&gate_entered, 1, 5000));
	b = raw_connect(fx->port);
	if (b < 0) {
		close(a);
		T_ASSERT(0);
	}
	raw_send(b, "GET /v1/sleep?ms=2000 HTTP/1.1\r\nHost: x\r\n\r\n");
	T_EXPECT(wait_busy(fx, 1, 1));
	close(b);
	close(a);
	T_EXPECT(wait_conns(fx, 0));
	t0 = now_s();
	gate_release();
	T_EXPECT(seen_wait("GET", "/v1/gate", 499));
	T_EXPECT(seen_wait("GET", "/v1/sleep", 499));
	/* The queued sleeper was skipped, not run for 2 s. */
	T_EXPECT(now_s() - t0 < 1.5);
	T_EXPECT(!seen_wait("GET", "/v1/gate", 200));
}

static void test_client_gone_499(void)
{
	with_one_worker(4, body_client_gone);
}

/*
 * A connection closed while its handler runs, then a new connection that
 * very likely gets the same descriptor: the old answer must never be
 * written to the new client.
 */
static void body_fd_reuse(struct fx *fx)
{
	char reply[4096];
	int a, b;

	gate_reset();
	a = raw_connect(fx->port);
	T_ASSERT(a >= 0);
	raw_send(a, "GET /v1/gate HTTP/1.1\r\nHost: x\r\n\r\n");
	T_EXPECT(wait_count(&gate_entered, 1, 5000));
	close(a);
	/* Wait for the server to notice, so the descriptor is free. */
	wait_conns(fx, 0);
	b = raw_connect(fx->port);
	T_ASSERT(b >= 0);
	raw_send(b, "GET /v1/jobs/b1 HTTP/1.1\r\nHost: x\r\n\r\n");
	T_EQ_INT(raw_read_for(b, reply, sizeof(reply), 3000, "\"id\":\"b1\""),
		 2);
	gate_release();
	T_EXPECT(wait_count(&gate_returned, 1, 5000));
	/* Nothing more arrives on b by itself... */
	T_EQ_INT(raw_read_for(b, reply, sizeof(reply), 300, "HTTP/"), 0);
	/* ...and its next answer is its own. */
	raw_send(b, "GET /v1/jobs/b2 HTTP/1.1\r\nHost: x\r\n"
		    "Connection: close\r\n\r\n");
	T_EXPECT(raw_read_all(b, reply, sizeof(reply), 3000) == 1);
	close(b);
	T_EQ_INT(count_of(reply, "HTTP/1.1 "), 1);
	T_CONTAINS(reply, "\"id\":\"b2\"");
	T_EXPECT(strstr(reply, "gate") == NULL);
}

static void test_fd_reuse_after_close(void)
{
	with_server(NULL, body_fd_reuse);
}

/*
 * mer_http_server_stop() while workers keep handing answers to the I/O
 * thread: the stop must never be lost (the I/O thread once consumed the
 * stop's wake-up while taking finished answers, and slept for ever). A
 * stop that does not return within 5 s fails the case; the stuck server is
 * then leaked on purpose (freeing it would hang too).
 */
struct spin {
	pthread_t t;
	int port;
	int stop;
};

static void *spin_main(void *arg)
{
	static const char req[] = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
				  "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
				  "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
				  "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
	struct spin *s = arg;
	char tmp[8192];
	int fd = raw_connect(s->port);

	while (fd >= 0 && !__atomic_load_n(&s->stop, __ATOMIC_SEQ_CST)) {
		struct pollfd p = {fd, POLLIN, 0};
		ssize_t r;

		if (raw_send(fd, req) != 0)
			break;
		if (poll(&p, 1, 100) <= 0)
			continue;
		r = recv(fd, tmp, sizeof(tmp), 0);
		if (r <= 0)
			break;
	}
	if (fd >= 0)
		close(fd);
	return NULL;
}

static void test_stop_races_answers(void)
{
	int hung = 0;

	for (int iter = 0; iter < 150 && !hung; iter++) {
		struct mer_http_config cfg;
		struct mer_http_server *srv = NULL;
		struct stopper st;
		struct spin sp[4];
		int nsp = 0;

		cfg_defaults(&cfg);
		cfg.observe = NULL;
		if (mer_http_server_new(&cfg, &srv, NULL, 0) != 0 ||
		    mer_http_server_add_routes(
			srv, routes, sizeof(routes) / sizeof(routes[0])) != 0 ||
		    mer_http_server_start(srv) != 0) {
			mer_http_server_free(srv);
			T_ASSERT(0);
		}
		for (int i = 0; i < 4; i++) {
			memset(&sp[i], 0, sizeof(sp[i]));
			sp[i].port = mer_http_server_port(srv);
			if (pthread_create(&sp[i].t, NULL, spin_main, &sp[i]) ==
			    0)
				nsp++;
			else
				break;
		}
		sleep_ms(5 + iter % 7);
		memset(&st, 0, sizeof(st));
		pthread_mutex_init(&st.mu, NULL);
		st.srv = srv;
		if (pthread_create(&st.t, NULL, stop_main, &st) != 0) {
			mer_http_server_stop(srv);
			st.done = 1;
		} else {
			for (int w = 0; w < 500 && !stopper_done(&st); w++)
				sleep_ms(10);
			if (stopper_done(&st))
				pthread_join(st.t, NULL);
			else
				hung = 1;
		}
		for (int i = 0; i < nsp; i++)
			__atomic_store_n(&sp[i].stop, 1, __ATOMIC_SEQ_CST);
		for (int i = 0; i < nsp; i++)
			pthread_join(sp[i].t, NULL);
		if (hung) {
			t_fail(__FILE__, __LINE__,
			       "mer_http_server_stop hung (iteration %d)",
			       iter);
			pthread_detach(st.t);
			return; /* srv leaked: it cannot be freed */
		}
		pthread_mutex_destroy(&st.mu);
		mer_http_server_free(srv);
	}
}

/* A content type is a header value too: CR/LF in it must be refused, not
 * turned into a header of the handler's (or a client's) choosing. */
static void body_ctype(struct fx *fx)
{
	struct resp r;
	char v[64];

	__atomic_store_n(&ctype_rv, -1, __ATOMIC_SEQ_CST);
	req_simple(fx, "GET", "/v1/ctype", NULL, &r);
	T_EQ_INT(r.cc, CURLE_OK);
	T_EXPECT(resp_header(&r, "X-Injected", v, sizeof(v)) == NULL);
	T_EQ_INT(__atomic_load_n(&ctype_rv, __ATOMIC_SEQ_CST), MER_EINVAL);
	T_EQ_INT(r.status, 400);
	resp_free(&r);
}

static void test_content_type_injection(void)
{
	with_server(NULL, body_ctype);
}

/*
 * A request whose client has gone gives its queue slot back at once: with
 * the only worker held and a queue of one, a client that queued and left
 * must not make the next client's request a 503.
 */
static void body_gone_frees_slot(struct fx *fx)
{
	struct bg a, c;
	int b;

	gate_reset();
	T_ASSERT(bg_start(&a, fx, "/v1/gate") == 0);
	T_EXPECT(wait_count(&gate_entered, 1, 5000));
	b = raw_connect(fx->port);
	if (b >= 0) {
		raw_send(b, "GET /v1/jobs/gone HTTP/1.1\r\nHost: x\r\n\r\n");
		T_EXPECT(wait_busy(fx, 1, 1));
		close(b);
	}
	T_EXPECT(wait_conns(fx, 1));
	/* Observed as soon as it is dropped, not when a worker frees. */
	T_EXPECT(seen_wait("GET", "/v1/jobs/{id}", 499));
	if (bg_start(&c, fx, "/v1/jobs/next") != 0) {
		gate_abandon(&a);
		T_ASSERT(0);
	}
	T_EXPECT(wait_busy(fx, 1, 1));
	gate_join_ok(&a, &c);
	T_EQ_STR(jstr(c.r.json, "id"), "next");
	resp_free(&a.r);
	resp_free(&c.r);
}

static void test_gone_client_frees_queue_slot(void)
{
	with_one_worker(1, body_gone_frees_slot);
}

/*
 * An HTTP/1.0 request's "Expect: 100-continue" is ignored (RFC 9110
 * 10.1.1): no interim 100 goes to a client that cannot parse one. And a
 * 505 is labelled with the method that was read.
 */
static void body_http10_expect(struct fx *fx)
{
	char reply[4096];
	int fd = raw_connect(fx->port);

	T_ASSERT(fd >= 0);
	raw_send(fd, "POST /v1/echo HTTP/1.0\r\nExpect: 100-continue\r\n"
		     "Content-Length: 2\r\n\r\n");
	T_EQ_INT(raw_read_for(fd, reply, sizeof(reply), 300, "HTTP/"), 0);
	raw_send(fd, "{}");
	T_EXPECT(raw_read_all(fd, reply, sizeof(reply), 3000) == 1);
	close(fd);
	T_EXPECT(strncmp(reply, "HTTP/1.1 200 ", 13) == 0);
	T_EXPECT(strstr(reply, "100 Continue") == NULL);

	fd = raw_connect(fx->port);
	T_ASSERT(fd >= 0);
	raw_send(fd, "GET /healthz HTTP/2.0\r\nHost: x\r\n\r\n");
	T_EXPECT(raw_read_all(fd, reply, sizeof(reply), 3000) == 1);
	close(fd);
	T_CONTAINS(reply, "HTTP/1.1 505");
	T_EXPECT(seen_wait("GET", "unmatched", 505));
}

static void test_http10_expect_and_labels(void)
{
	with_server(NULL, body_http10_expect);
}

static const struct t_case cases[] = {
    {"json_echo", test_json_echo},
    {"path_params", test_path_params},
    {"query_params", test_query_params},
    {"header_lookup", test_header_lookup},
    {"bad_json_400", test_bad_json_400},
    {"not_found_404", test_not_found_404},
    {"method_405", test_method_405},
    {"too_large_413", test_too_large_413},
    {"large_body", test_large_body},
    {"body_framing_and_timeout", test_body_framing_and_timeout},
    {"handler_errors", test_handler_errors},
    {"status_map", test_status_map},
    {"parallel_slow_handlers", test_parallel_slow_handlers},
    {"queue_full_503", test_queue_full_503},
    {"keepalive", test_keepalive},
    {"stop_with_clients", test_stop_with_clients},
    {"stop_under_load", test_stop_under_load},
    {"tls_roundtrip", test_tls_roundtrip},
    {"config_errors", test_config_errors},
    {"port_in_use", test_port_in_use},
    {"slowloris_408", test_slowloris_408},
    {"idle_timeout", test_idle_timeout},
    {"header_limits_431", test_header_limits_431},
    {"max_connections_503", test_max_connections_503},
    {"malformed_requests", test_malformed_requests},
    {"pipelined_and_head", test_pipelined_and_head},
    {"pipeline_flood_fair", test_pipeline_flood_fair},
    {"client_gone_499", test_client_gone_499},
    {"fd_reuse_after_close", test_fd_reuse_after_close},
    {"stop_races_answers", test_stop_races_answers},
    {"content_type_injection", test_content_type_injection},
    {"gone_client_frees_queue_slot", test_gone_client_frees_queue_slot},
    {"http10_expect_and_labels", test_http10_expect_and_labels},
};

int main(int argc, char **argv)
{
	int rv;

	curl_global_init(CURL_GLOBAL_ALL);
	mer_log_set_level(MER_LOG_WARN);
	rv = t_run("http", cases, sizeof(cases) / sizeof(cases[0]), argc, argv);
	curl_global_cleanup();
	return rv;
}
