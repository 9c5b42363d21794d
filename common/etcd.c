/*
 * etcd v3 client over the JSON gateway (see etcd.h and docs/ETCD.md):
 * request/response plumbing with a pool of kept-alive curl handles and
 * endpoint fail-over, kv/txn/lease calls, a lease keeper thread and a
 * resuming watch thread. Not a gRPC client and not a cluster manager.
 */
#include "common/etcd.h"

#include <errno.h>
#include <inttypes.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <jansson.h>
#include <sodium.h>

#include "common/base64.h"
#include "common/err.h"
#include "common/log.h"

#define DEF_CONNECT_MS 2000L
#define DEF_REQUEST_MS 5000L
#define DEF_POOL 8u
#define DEF_MAX_RESPONSE ((size_t)64 << 20)
#define MAX_ENDPOINTS 16

struct mer_etcd {
	char *eps[MAX_ENDPOINTS];
	unsigned n_eps;
	atomic_uint preferred;
	long connect_ms;
	long request_ms;
	char *ca_file;
	char *cert_file;
	char *key_file;
	unsigned pool_size;
	size_t max_response;
	struct curl_slist *headers;

	/* Idle handles, each with its own cache of open connections. */
	pthread_mutex_t pool_mu;
	CURL **idle;
	unsigned n_idle;

	atomic_uint_fast64_t n_requests;
	atomic_uint_fast64_t n_connections;
	atomic_uint_fast64_t n_failovers;

	/* Fencing (mer_etcd_guard_set): every write carries a compare on
	 * guard_key's create_revision. */
	pthread_mutex_t guard_mu;
	int guard_mode;
	char guard_key[MER_ETCD_GUARD_KEY_MAX];
	size_t guard_key_len;
	int64_t guard_rev;
	mer_etcd_fenced_fn guard_fn;
	void *guard_arg;
	atomic_uint_fast64_t n_fenced;
};

enum { GUARD_OFF = 0, GUARD_ON = 1, GUARD_BLOCK = 2 };

/* One call's copy of the guard (it may change meanwhile). */
struct guard {
	int mode;
	char key[MER_ETCD_GUARD_KEY_MAX];
	size_t key_len;
	int64_t rev;
};

/* ---- small helpers ------------------------------------------------------ */

static pthread_once_t global_once = PTHREAD_ONCE_INIT;
static int global_rv;

static void global_init(void)
{
	/* curl_global_init is not guaranteed thread-safe; do it once. */
	if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
		global_rv = MER_ENOMEM;
	if (sodium_init() < 0)
		global_rv = MER_ENOMEM;
}

static long long now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void status_reset(struct mer_etcd_status *st)
{
	if (st)
		memset(st, 0, sizeof(*st));
}

static void status_msg(struct mer_etcd_status *st, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));

static void status_msg(struct mer_etcd_status *st, const char *fmt, ...)
{
	va_list ap;

	if (!st)
		return;
	va_start(ap, fmt);
	vsnprintf(st->message, sizeof(st->message), fmt, ap);
	va_end(ap);
}

static char *dup_or_null(const char *s)
{
	return s ? strdup(s) : NULL;
}

/* int64 fields come back as JSON strings ("revision":"12"); accept numbers
 * too. Absent means 0 (proto3 omits defaults). */
static int get_i64(const json_t *o, const char *k, int64_t *out)
{
	const json_t *v = o ? json_object_get(o, k) : NULL;

	*out = 0;
	if (!v || json_is_null(v))
		return 0;
	if (json_is_integer(v)) {
		*out = (int64_t)json_integer_value(v);
		return 0;
	}
	if (json_is_string(v)) {
		const char *s = json_string_value(v);
		char *end = NULL;
		errno = 0;
		long long x = strtoll(s, &end, 10);
		if (errno != 0 || end == s || *end != '\0')
			return MER_EPROTO;
		*out = (int64_t)x;
		return 0;
	}
	return MER_EPROTO;
}

static int get_bool(const json_t *o, const char *k)
{
	const json_t *v = o ? json_object_get(o, k) : NULL;

	return v && json_is_true(v);
}

/* Decodes base64 member k into a malloc'd, NUL-terminated buffer; absent
 * gives "". */
static int get_bytes(const json_t *o, const char *k, char **p, size_t *n)
{
	const json_t *v = o ? json_object_get(o, k) : NULL;
	unsigned char *buf = NULL;
	int rv;

	*p = NULL;
	*n = 0;
	if (!v || json_is_null(v)) {
		*p = calloc(1, 1);
		return *p ? 0 : MER_ENOMEM;
	}
	if (!json_is_string(v))
		return MER_EPROTO;
	rv = mer_base64_decode(json_string_value(v), json_string_length(v),
			       MER_BASE64_STD, &buf, n);
	if (rv == MER_EPARSE)
		return MER_EPROTO;
	if (rv != 0)
		return rv;
	*p = (char *)buf;
	return 0;
}

static int set_b64(json_t *o, const char *k, const void *p, size_t n)
{
	char *s = NULL;
	size_t len = 0;
	int rv = mer_base64_encode(p, n, MER_BASE64_STD, &s, &len);

	if (rv != 0)
		return rv;
	rv = json_object_set_new(o, k, json_stringn(s, len)) ? MER_ENOMEM : 0;
	free(s);
	return rv;
}

static int set_i64(json_t *o, const char *k, int64_t x)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%" PRId64, x);
	return json_object_set_new(o, k, json_string(buf)) ? MER_ENOMEM : 0;
}

static int set_true(json_t *o, const char *k)
{
	return json_object_set_new(o, k, json_true()) ? MER_ENOMEM : 0;
}

void mer_etcd_prefix_end(const void *prefix, size_t prefix_len, void *out,
			 size_t *out_len)
{
	const unsigned char *p = prefix;
	unsigned char *o = out;

	/* Same rule as etcd's clientv3.GetPrefixRangeEnd. */
	for (size_t i = prefix_len; i > 0; i--) {
		if (p[i - 1] < 0xff) {
			memcpy(o, p, i - 1);
			o[i - 1] = (unsigned char)(p[i - 1] + 1);
			*out_len = i;
			return;
		}
	}
	o[0] = 0;
	*out_len = 1;
}

/* Adds key and (for prefix) range_end to a request object. */
static int set_key_range(json_t *o, const void *key, size_t key_len, int prefix)
{
	int rv;

	if (key_len == 0 && prefix) {
		/* Every key: key "\0", range_end "\0". */
		rv = set_b64(o, "key", "", 1);
		return rv ? rv : set_b64(o, "range_end", "", 1);
	}
	rv = set_b64(o, "key", key, key_len);
	if (rv || !prefix)
		return rv;
	unsigned char *end = malloc(key_len);
	size_t end_len = 0;
	if (!end)
		return MER_ENOMEM;
	mer_etcd_prefix_end(key, key_len, end, &end_len);
	rv = set_b64(o, "range_end", end, end_len);
	free(end);
	return rv;
}

void mer_etcd_kv_clear(struct mer_etcd_kv *kv)
{
	if (!kv)
		return;
	free(kv->key);
	free(kv->value);
	memset(kv, 0, sizeof(*kv));
}

static int parse_kv(const json_t *o, struct mer_etcd_kv *kv)
{
	int rv;

	memset(kv, 0, sizeof(*kv));
	if (!json_is_object(o))
		return MER_EPROTO;
	if ((rv = get_bytes(o, "key", &kv->key, &kv->key_len)) ||
	    (rv = get_bytes(o, "value", &kv->value, &kv->value_len)) ||
	    (rv = get_i64(o, "create_revision", &kv->create_revision)) ||
	    (rv = get_i64(o, "mod_revision", &kv->mod_revision)) ||
	    (rv = get_i64(o, "version", &kv->version)) ||
	    (rv = get_i64(o, "lease", &kv->lease))) {
		mer_etcd_kv_clear(kv);
		return rv;
	}
	return 0;
}

void mer_etcd_range_clear(struct mer_etcd_range *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->n; i++)
		mer_etcd_kv_clear(&r->kvs[i]);
	free(r->kvs);
	memset(r, 0, sizeof(*r));
}

static int header_revision(const json_t *resp, int64_t *rev)
{
	return get_i64(json_object_get(resp, "header"), "revision", rev);
}

/* A RangeResponse (top level or inside a txn) into r. */
static int parse_range(const json_t *o, struct mer_etcd_range *r)
{
	const json_t *kvs = json_object_get(o, "kvs");
	int rv;

	memset(r, 0, sizeof(*r));
	if ((rv = get_i64(o, "count", &r->count)) ||
	    (rv = header_revision(o, &r->revision)))
		return rv;
	r->more = get_bool(o, "more");
	if (!kvs)
		return 0;
	if (!json_is_array(kvs))
		return MER_EPROTO;
	size_t n = json_array_size(kvs);
	if (n == 0)
		return 0;
	r->kvs = calloc(n, sizeof(*r->kvs));
	if (!r->kvs)
		return MER_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		rv = parse_kv(json_array_get(kvs, i), &r->kvs[i]);
		if (rv != 0) {
			mer_etcd_range_clear(r);
			return rv;
		}
		r->n++;
	}
	return 0;
}

/* ---- client and handle pool --------------------------------------------- */

static int parse_endpoints(struct mer_etcd *c, const char *list)
{
	const char *p = list;

	while (*p) {
		const char *comma = strchr(p, ',');
		size_t n = comma ? (size_t)(comma - p) : strlen(p);
		/* trim spaces, allowed for readability in config files */
		while (n > 0 && (*p == ' ' || *p == '\t')) {
			p++;
			n--;
		}
		while (n > 0 && (p[n - 1] == ' ' || p[n - 1] == '\t'))
			n--;
		while (n > 0 && p[n - 1] == '/')
			n--;
		if (n == 0 || c->n_eps == MAX_ENDPOINTS)
			return MER_EINVAL;
		if (!(n > 7 && strncmp(p, "http://", 7) == 0) &&
		    !(n > 8 && strncmp(p, "https://", 8) == 0))
			return MER_EINVAL;
		c->eps[c->n_eps] = strndup(p, n);
		if (!c->eps[c->n_eps])
			return MER_ENOMEM;
		c->n_eps++;
		if (!comma)
			break;
		p = comma + 1;
		if (!*p)
			return MER_EINVAL;
	}
	return c->n_eps ? 0 : MER_EINVAL;
}

int mer_etcd_open(const struct mer_etcd_opts *opts, struct mer_etcd **out)
{
	struct mer_etcd *c;
	int rv;

	*out = NULL;
	if (!opts || !opts->endpoints)
		return MER_EINVAL;
	pthread_once(&global_once, global_init);
	if (global_rv)
		return global_rv;
	c = calloc(1, sizeof(*c));
	if (!c)
		return MER_ENOMEM;
	pthread_mutex_init(&c->pool_mu, NULL);
	pthread_mutex_init(&c->guard_mu, NULL);
	if ((rv = parse_endpoints(c, opts->endpoints)) != 0)
		goto out_close;
	c->connect_ms = opts->connect_timeout_ms > 0 ? opts->connect_timeout_ms
						     : DEF_CONNECT_MS;
	c->request_ms = opts->request_timeout_ms > 0 ? opts->request_timeout_ms
						     : DEF_REQUEST_MS;
	c->pool_size = opts->pool_size ? opts->pool_size : DEF_POOL;
	c->max_response = opts->max_response_bytes ? opts->max_response_bytes
						   : DEF_MAX_RESPONSE;
	rv = MER_ENOMEM;
	c->ca_file = dup_or_null(opts->ca_file);
	c->cert_file = dup_or_null(opts->cert_file);
	c->key_file = dup_or_null(opts->key_file);
	if ((opts->ca_file && !c->ca_file) ||
	    (opts->cert_file && !c->cert_file) ||
	    (opts->key_file && !c->key_file))
		goto out_close;
	c->idle = calloc(c->pool_size, sizeof(*c->idle));
	if (!c->idle)
		goto out_close;
	/* "Expect:" stops curl from waiting for 100-continue on big txns. */
	c->headers = curl_slist_append(NULL, "Content-Type: application/json");
	if (!c->headers)
		goto out_close;
	struct curl_slist *h = curl_slist_append(c->headers, "Expect:");
	if (!h)
		goto out_close;
	c->headers = h;
	*out = c;
	return 0;
out_close:
	mer_etcd_close(c);
	return rv;
}

void mer_etcd_close(struct mer_etcd *c)
{
	if (!c)
		return;
	for (unsigned i = 0; i < c->n_idle; i++)
		curl_easy_cleanup(c->idle[i]);
	free(c->idle);
	curl_slist_free_all(c->headers);
	for (unsigned i = 0; i < c->n_eps; i++)
		free(c->eps[i]);
	free(c->ca_file);
	free(c->cert_file);
	free(c->key_file);
	pthread_mutex_destroy(&c->pool_mu);
	pthread_mutex_destroy(&c->guard_mu);
	free(c);
}

unsigned mer_etcd_current_endpoint(const struct mer_etcd *c)
{
	return atomic_load(&((struct mer_etcd *)c)->preferred);
}

void mer_etcd_get_stats(const struct mer_etcd *c, struct mer_etcd_stats *out)
{
	struct mer_etcd *m = (struct mer_etcd *)c;

	out->requests = atomic_load(&m->n_requests);
	out->connections = atomic_load(&m->n_connections);
	out->failovers = atomic_load(&m->n_failovers);
}

/* Options every handle of this client shares. */
static void setup_handle(struct mer_etcd *c, CURL *h)
{
	curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(h, CURLOPT_HTTPHEADER, c->headers);
	curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT_MS, c->connect_ms);
	curl_easy_setopt(h, CURLOPT_TCP_NODELAY, 1L);
	curl_easy_setopt(h, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(h, CURLOPT_TCP_KEEPIDLE, 10L);
	curl_easy_setopt(h, CURLOPT_TCP_KEEPINTVL, 5L);
	curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
	if (c->ca_file)
		curl_easy_setopt(h, CURLOPT_CAINFO, c->ca_file);
	if (c->cert_file)
		curl_easy_setopt(h, CURLOPT_SSLCERT, c->cert_file);
	if (c->key_file)
		curl_easy_setopt(h, CURLOPT_SSLKEY, c->key_file);
}

static CURL *checkout(struct mer_etcd *c)
{
	CURL *h = NULL;

	pthread_mutex_lock(&c->pool_mu);
	if (c->n_idle > 0)
		h = c->idle[--c->n_idle];
	pthread_mutex_unlock(&c->pool_mu);
	if (h)
		return h;
	h = curl_easy_init();
	if (h)
		setup_handle(c, h);
	return h;
}

static void checkin(struct mer_etcd *c, CURL *h)
{
	pthread_mutex_lock(&c->pool_mu);
	if (c->n_idle < c->pool_size) {
		c->idle[c->n_idle++] = h;
		h = NULL;
	}
	pthread_mutex_unlock(&c->pool_mu);
	if (h)
		curl_easy_cleanup(h);
}

struct resp_buf {
	char *p;
	size_t n;
	size_t cap;
	size_t max;
	int too_big;
};

static size_t on_body(char *data, size_t size, size_t nmemb, void *arg)
{
	struct resp_buf *b = arg;
	size_t len = size * nmemb;

	if (len > b->max - b->n) {
		b->too_big = 1;
		return 0;
	}
	if (b->n + len + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 4096;
		while (cap < b->n + len + 1)
			cap *= 2;
		char *np = realloc(b->p, cap);
		if (!np)
			return 0;
		b->p = np;
		b->cap = cap;
	}
	memcpy(b->p + b->n, data, len);
	b->n += len;
	b->p[b->n] = '\0';
	return len;
}

/* An error answer: {"error": "...", "message": "...", "code": N}, or the
 * streaming form {"error": {"grpc_code": N, "message": "..."}}. */
static void parse_error_body(const json_t *root, struct mer_etcd_status *st)
{
	const json_t *e = json_object_get(root, "error");
	const char *msg = NULL;
	int64_t code = 0;

	if (json_is_object(e)) {
		msg = json_string_value(json_object_get(e, "message"));
		get_i64(e, "grpc_code", &code);
	} else {
		msg = json_string_value(json_object_get(root, "message"));
		if (!msg)
			msg = json_string_value(e);
		get_i64(root, "code", &code);
	}
	if (st) {
		st->grpc_code = (int)code;
		status_msg(st, "%s", msg ? msg : "etcd returned an error");
	}
}

/*
 * POSTs req to path on the endpoints, from the preferred one on. A
 * transport failure moves on to the next endpoint when nothing was sent or
 * the call is idempotent (a write that may have reached etcd is not sent
 * twice). On 2xx, *resp gets the parsed body; a non-2xx answer is
 * MER_EREMOTE with etcd's message in st.
 */
static int call(struct mer_etcd *c, const char *path, const json_t *req,
		int idempotent, json_t **resp, struct mer_etcd_status *st)
{
	char errbuf[CURL_ERROR_SIZE], url[512];
	struct resp_buf b = {0};
	unsigned start = atomic_load(&c->preferred) % c->n_eps;
	char *body = NULL;
	int rv = MER_EUNREACHABLE;
	CURL *h = NULL;

	*resp = NULL;
	status_reset(st);
	body = json_dumps(req, JSON_COMPACT);
	if (!body)
		return MER_ENOMEM;
	h = checkout(c);
	if (!h) {
		rv = MER_ENOMEM;
		goto out_free;
	}
	b.max = c->max_response;
	for (unsigned i = 0; i < c->n_eps; i++) {
		unsigned ep = (start + i) % c->n_eps;
		long http = 0, nconn = 0, reqsize = 0;
		CURLcode cc;

		if (i > 0)
			atomic_fetch_add(&c->n_failovers, 1);
		snprintf(url, sizeof(url), "%s%s", c->eps[ep], path);
		b.n = 0;
		b.too_big = 0;
		errbuf[0] = '\0';
		curl_easy_setopt(h, CURLOPT_URL, url);
		curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
				 (curl_off_t)strlen(body));
		curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, c->request_ms);
		curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_body);
		curl_easy_setopt(h, CURLOPT_WRITEDATA, &b);
		curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
		atomic_fetch_add(&c->n_requests, 1);
		cc = curl_easy_perform(h);
		curl_easy_getinfo(h, CURLINFO_NUM_CONNECTS, &nconn);
		atomic_fetch_add(&c->n_connections, (uint64_t)nconn);
		curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
		if (cc == CURLE_WRITE_ERROR && b.too_big) {
			status_msg(st, "response over %zu bytes",
				   c->max_response);
			rv = MER_ETOOBIG;
			goto out_checkin;
		}
		if (cc != CURLE_OK) {
			int sent;
			curl_easy_getinfo(h, CURLINFO_REQUEST_SIZE, &reqsize);
			sent = reqsize > 0 && cc != CURLE_COULDNT_CONNECT &&
			       cc != CURLE_COULDNT_RESOLVE_HOST;
			status_msg(st, "%s: %s", c->eps[ep],
				   errbuf[0] ? errbuf : curl_easy_strerror(cc));
			mer_debug("etcd request failed",
				  "endpoint=%s path=%s "
				  "error=%s",
				  c->eps[ep], path,
				  errbuf[0] ? errbuf : curl_easy_strerror(cc));
			rv = MER_EUNREACHABLE;
			if (sent && !idempotent) {
				if (st)
					st->maybe_applied = 1;
				goto out_checkin;
			}
			continue;
		}
		atomic_store(&c->preferred, ep);
		curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &http);
		json_error_t jerr;
		json_t *root = b.n ? json_loadb(b.p, b.n, 0, &jerr) : NULL;
		if (st)
			st->http_status =
			    http >= 200 && http < 300 ? 0 : (int)http;
		if (!root) {
			status_msg(st, "%s: unreadable answer (HTTP %ld)",
				   c->eps[ep], http);
			/* Something answered with an error page (a proxy,
			 * a wrong port): still "the server said no". */
			rv = http >= 200 && http < 300 ? MER_EPROTO
						       : MER_EREMOTE;
			goto out_checkin;
		}
		if (http < 200 || http >= 300) {
			parse_error_body(root, st);
			json_decref(root);
			rv = MER_EREMOTE;
			goto out_checkin;
		}
		if (st)
			st->message[0] = '\0'; /* an earlier endpoint's */
		if (st)
			header_revision(json_object_get(root, "result")
					    ? json_object_get(root, "result")
					    : root,
					&st->revision);
		*resp = root;
		rv = 0;
		goto out_checkin;
	}
out_checkin:
	checkin(c, h);
out_free:
	free(body);
	free(b.p);
	return rv;
}

/* ---- kv ----------------------------------------------------------------- */

static int guarded_single(struct mer_etcd *c, const struct mer_etcd_op *op,
			  int64_t *deleted, int *done,
			  struct mer_etcd_status *st);

int mer_etcd_put(struct mer_etcd *c, const void *key, size_t key_len,
		 const void *value, size_t value_len, int64_t lease,
		 struct mer_etcd_status *st)
{
	struct mer_etcd_op op = {.type = MER_ETCD_OP_PUT,
				 .key = key,
				 .key_len = key_len,
				 .value = value,
				 .value_len = value_len,
				 .lease = lease};
	json_t *req, *resp = NULL;
	int rv, done;

	status_reset(st);
	rv = guarded_single(c, &op, NULL, &done, st);
	if (done)
		return rv;
	rv = MER_ENOMEM;
	req = json_object();
	if (!req)
		return MER_ENOMEM;
	if (set_b64(req, "key", key, key_len) ||
	    set_b64(req, "value", value, value_len) ||
	    (lease && set_i64(req, "lease", lease)))
		goto out;
	rv = call(c, "/v3/kv/put", req, 0, &resp, st);
out:
	json_decref(resp);
	json_decref(req);
	return rv;
}

static json_t *range_req(const void *key, size_t key_len, int prefix,
			 int64_t limit, int64_t revision, int keys_only)
{
	json_t *req = json_object();

	if (!req)
		return NULL;
	if (set_key_range(req, key, key_len, prefix) ||
	    (limit > 0 && set_i64(req, "limit", limit)) ||
	    (revision > 0 && set_i64(req, "revision", revision)) ||
	    (keys_only && set_true(req, "keys_only"))) {
		json_decref(req);
		return NULL;
	}
	return req;
}

int mer_etcd_get(struct mer_etcd *c, const void *key, size_t key_len,
		 struct mer_etcd_kv *kv, struct mer_etcd_status *st)
{
	struct mer_etcd_range r;
	json_t *req, *resp = NULL;
	int rv;

	memset(kv, 0, sizeof(*kv));
	status_reset(st);
	req = range_req(key, key_len, 0, 0, 0, 0);
	if (!req)
		return MER_ENOMEM;
	rv = call(c, "/v3/kv/range", req, 1, &resp, st);
	json_decref(req);
	if (rv != 0)
		return rv;
	rv = parse_range(resp, &r);
	json_decref(resp);
	if (rv != 0)
		return rv;
	if (r.n == 0) {
		rv = MER_ENOTFOUND;
	} else {
		/* Hand over the first kv; free the array shell. */
		*kv = r.kvs[0];
		memset(&r.kvs[0], 0, sizeof(r.kvs[0]));
	}
	mer_etcd_range_clear(&r);
	return rv;
}

static int delete_range(struct mer_etcd *c, const void *key, size_t key_len,
			int prefix, int64_t *deleted,
			struct mer_etcd_status *st)
{
	struct mer_etcd_op op = {.type = MER_ETCD_OP_DELETE,
				 .key = key,
				 .key_len = key_len,
				 .prefix = prefix};
	json_t *req, *resp = NULL;
	int64_t n = 0;
	int rv, done;

	status_reset(st);
	if (deleted)
		*deleted = 0;
	rv = guarded_single(c, &op, deleted, &done, st);
	if (done)
		return rv;
	req = json_object();
	if (!req)
		return MER_ENOMEM;
	rv = MER_ENOMEM;
	if (set_key_range(req, key, key_len, prefix))
		goto out;
	rv = call(c, "/v3/kv/deleterange", req, 0, &resp, st);
	if (rv == 0)
		rv = get_i64(resp, "deleted", &n);
	if (rv == 0 && deleted)
		*deleted = n;
out:
	json_decref(resp);
	json_decref(req);
	return rv;
}

int mer_etcd_delete(struct mer_etcd *c, const void *key, size_t key_len,
		    int64_t *deleted, struct mer_etcd_status *st)
{
	return delete_range(c, key, key_len, 0, deleted, st);
}

int mer_etcd_delete_prefix(struct mer_etcd *c, const void *prefix,
			   size_t prefix_len, int64_t *deleted,
			   struct mer_etcd_status *st)
{
	status_reset(st);
	if (prefix_len == 0)
		return MER_EINVAL;
	return delete_range(c, prefix, prefix_len, 1, deleted, st);
}

int mer_etcd_range_prefix(struct mer_etcd *c, const void *prefix,
			  size_t prefix_len, const void *after,
			  size_t after_len, int64_t limit, int64_t revision,
			  int keys_only, struct mer_etcd_range *r,
			  struct mer_etcd_status *st)
{
	json_t *req, *resp = NULL;
	int rv;

	memset(r, 0, sizeof(*r));
	status_reset(st);
	req = range_req(prefix, prefix_len, 1, limit, revision, keys_only);
	if (!req)
		return MER_ENOMEM;
	if (after) {
		/* Next page: the smallest key after `after` is after+"\0". */
		unsigned char *k = malloc(after_len + 1);
		if (!k) {
			json_decref(req);
			return MER_ENOMEM;
		}
		memcpy(k, after, after_len);
		k[after_len] = 0;
		rv = set_b64(req, "key", k, after_len + 1);
		free(k);
		if (rv) {
			json_decref(req);
			return rv;
		}
	}
	rv = call(c, "/v3/kv/range", req, 1, &resp, st);
	json_decref(req);
	if (rv != 0)
		return rv;
	rv = parse_range(resp, r);
	json_decref(resp);
	/* The header has the store's current revision; a pinned read was
	 * made at the revision asked for. */
	if (rv == 0 && revision > 0)
		r->revision = revision;
	return rv;
}

int mer_etcd_compact(struct mer_etcd *c, int64_t revision,
		     struct mer_etcd_status *st)
{
	json_t *req = json_object(), *resp = NULL;
	int rv = MER_ENOMEM;

	status_reset(st);
	if (!req)
		return MER_ENOMEM;
	if (set_i64(req, "revision", revision))
		goto out;
	rv = call(c, "/v3/kv/compaction", req, 0, &resp, st);
out:
	json_decref(resp);
	json_decref(req);
	return rv;
}

/* ---- txn ---------------------------------------------------------------- */

static const char *cmp_target_name(enum mer_etcd_cmp_target t)
{
	switch (t) {
	case MER_ETCD_CMP_VALUE:
		return "VALUE";
	case MER_ETCD_CMP_VERSION:
		return "VERSION";
	case MER_ETCD_CMP_CREATE_REVISION:
		return "CREATE";
	case MER_ETCD_CMP_MOD_REVISION:
		return "MOD";
	}
	return NULL;
}

static const char *cmp_result_name(enum mer_etcd_cmp_result r)
{
	switch (r) {
	case MER_ETCD_CMP_EQUAL:
		return "EQUAL";
	case MER_ETCD_CMP_NOT_EQUAL:
		return "NOT_EQUAL";
	case MER_ETCD_CMP_LESS:
		return "LESS";
	case MER_ETCD_CMP_GREATER:
		return "GREATER";
	}
	return NULL;
}

static int build_cmp(const struct mer_etcd_cmp *m, json_t **out)
{
	const char *t = cmp_target_name(m->target);
	const char *r = cmp_result_name(m->result);
	json_t *o;
	int rv;

	*out = NULL;
	if (!t || !r || m->key_len == 0)
		return MER_EINVAL;
	o = json_object();
	if (!o)
		return MER_ENOMEM;
	rv = set_b64(o, "key", m->key, m->key_len);
	if (!rv && (json_object_set_new(o, "target", json_string(t)) ||
		    json_object_set_new(o, "result", json_string(r))))
		rv = MER_ENOMEM;
	if (!rv) {
		switch (m->target) {
		case MER_ETCD_CMP_VALUE:
			rv = set_b64(o, "value", m->value, m->value_len);
			break;
		case MER_ETCD_CMP_VERSION:
			rv = set_i64(o, "version", m->number);
			break;
		case MER_ETCD_CMP_CREATE_REVISION:
			rv = set_i64(o, "create_revision", m->number);
			break;
		case MER_ETCD_CMP_MOD_REVISION:
			rv = set_i64(o, "mod_revision", m->number);
			break;
		}
	}
	if (rv) {
		json_decref(o);
		return rv;
	}
	*out = o;
	return 0;
}

static int build_op(const struct mer_etcd_op *op, json_t **out)
{
	json_t *o = NULL, *inner = json_object();
	const char *name = NULL;
	int rv;

	*out = NULL;
	if (!inner)
		return MER_ENOMEM;
	switch (op->type) {
	case MER_ETCD_OP_PUT:
		name = "request_put";
		rv = set_b64(inner, "key", op->key, op->key_len);
		if (!rv)
			rv = set_b64(inner, "value", op->value, op->value_len);
		if (!rv && op->lease)
			rv = set_i64(inner, "lease", op->lease);
		break;
	case MER_ETCD_OP_RANGE:
		name = "request_range";
		rv = set_key_range(inner, op->key, op->key_len, op->prefix);
		if (!rv && op->limit > 0)
			rv = set_i64(inner, "limit", op->limit);
		break;
	case MER_ETCD_OP_DELETE:
		name = "request_delete_range";
		rv = set_key_range(inner, op->key, op->key_len, op->prefix);
		break;
	default:
		rv = MER_EINVAL;
		break;
	}
	if (!rv && !(o = json_object()))
		rv = MER_ENOMEM;
	if (!rv && json_object_set_new(o, name, inner)) {
		inner = NULL; /* set_new consumed it even on failure */
		rv = MER_ENOMEM;
	} else if (!rv) {
		inner = NULL;
	}
	if (rv) {
		json_decref(inner);
		json_decref(o);
		return rv;
	}
	*out = o;
	return 0;
}

static int build_cmps(json_t *req, const struct mer_etcd_cmp *cmps, size_t n)
{
	json_t *arr;

	if (n == 0)
		return 0;
	arr = json_array();
	if (!arr || json_object_set_new(req, "compare", arr))
		return MER_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		json_t *e = NULL;
		int rv = build_cmp(&cmps[i], &e);
		if (rv)
			return rv;
		if (json_array_append_new(arr, e))
			return MER_ENOMEM;
	}
	return 0;
}

static int build_ops(json_t *req, const char *name,
		     const struct mer_etcd_op *ops, size_t n)
{
	json_t *arr;

	if (n == 0)
		return 0;
	arr = json_array();
	if (!arr || json_object_set_new(req, name, arr))
		return MER_ENOMEM;
	for (size_t i = 0; i < n; i++) {
		json_t *e = NULL;
		int rv = build_op(&ops[i], &e);
		if (rv)
			return rv;
		if (json_array_append_new(arr, e))
			return MER_ENOMEM;
	}
	return 0;
}

void mer_etcd_txn_result_clear(struct mer_etcd_txn_result *r)
{
	if (!r)
		return;
	for (size_t i = 0; i < r->n; i++)
		mer_etcd_range_clear(&r->results[i].range);
	free(r->results);
	memset(r, 0, sizeof(*r));
}

/* A TxnResponse's branch results (not its header: a nested txn's is
 * empty). */
static int parse_txn_body(const json_t *resp, const struct mer_etcd_op *ops,
			  size_t n_ops, struct mer_etcd_txn_result *r)
{
	const json_t *arr = json_object_get(resp, "responses");
	size_t n = arr ? json_array_size(arr) : 0;
	int rv;

	r->succeeded = get_bool(resp, "succeeded");
	if (arr && !json_is_array(arr))
		return MER_EPROTO;
	if (n != n_ops)
		return MER_EPROTO;
	if (n == 0)
		return 0;
	r->results = calloc(n, sizeof(*r->results));
	if (!r->results)
		return MER_ENOMEM;
	r->n = n;
	for (size_t i = 0; i < n; i++) {
		const json_t *e = json_array_get(arr, i), *v;
		struct mer_etcd_op_result *o = &r->results[i];

		o->type = ops[i].type;
		switch (ops[i].type) {
		case MER_ETCD_OP_PUT:
			if (!json_object_get(e, "response_put"))
				return MER_EPROTO;
			break;
		case MER_ETCD_OP_RANGE:
			v = json_object_get(e, "response_range");
			if (!v)
				return MER_EPROTO;
			if ((rv = parse_range(v, &o->range)))
				return rv;
			break;
		case MER_ETCD_OP_DELETE:
			v = json_object_get(e, "response_delete_range");
			if (!v)
				return MER_EPROTO;
			if ((rv = get_i64(v, "deleted", &o->deleted)))
				return rv;
			break;
		}
	}
	return 0;
}

static int parse_txn(const json_t *resp, const struct mer_etcd_op *ops,
		     size_t n_ops, struct mer_etcd_txn_result *r)
{
	int rv = parse_txn_body(resp, ops, n_ops, r);

	if (rv == 0)
		rv = header_revision(resp, &r->revision);
	return rv;
}

static int txn_plain(struct mer_etcd *c, const struct mer_etcd_cmp *cmps,
		     size_t n_cmps, const struct mer_etcd_op *success,
		     size_t n_success, const struct mer_etcd_op *failure,
		     size_t n_failure, struct mer_etcd_txn_result *r,
		     struct mer_etcd_status *st)
{
	struct mer_etcd_txn_result tmp;
	json_t *req, *resp = NULL;
	int rv;

	if (!r)
		r = &tmp;
	memset(r, 0, sizeof(*r));
	status_reset(st);
	if ((n_cmps && !cmps) || (n_success && !success) ||
	    (n_failure && !failure))
		return MER_EINVAL;
	req = json_object();
	if (!req)
		return MER_ENOMEM;
	if ((rv = build_cmps(req, cmps, n_cmps)) ||
	    (rv = build_ops(req, "success", success, n_success)) ||
	    (rv = build_ops(req, "failure", failure, n_failure)))
		goto out;
	rv = call(c, "/v3/kv/txn", req, 0, &resp, st);
	if (rv != 0)
		goto out;
	/* "succeeded" is omitted when false (proto3 default). */
	int ok = get_bool(resp, "succeeded");
	rv = parse_txn(resp, ok ? success : failure, ok ? n_success : n_failure,
		       r);
	if (rv != 0) {
		mer_etcd_txn_result_clear(r);
		status_msg(st, "unexpected txn response");
	}
out:
	if (r == &tmp)
		mer_etcd_txn_result_clear(r);
	json_decref(resp);
	json_decref(req);
	return rv;
}

/* ---- fencing ------------------------------------------------------------ */

int mer_etcd_guard_set(struct mer_etcd *c, const void *key, size_t key_len,
		       int64_t create_revision, mer_etcd_fenced_fn fn,
		       void *arg)
{
	if (!key || key_len == 0 || key_len > sizeof(c->guard_key) ||
	    create_revision <= 0)
		return MER_EINVAL;
	pthread_mutex_lock(&c->guard_mu);
	memcpy(c->guard_key, key, key_len);
	c->guard_key_len = key_len;
	c->guard_rev = create_revision;
	c->guard_fn = fn;
	c->guard_arg = arg;
	c->guard_mode = GUARD_ON;
	pthread_mutex_unlock(&c->guard_mu);
	return 0;
}

void mer_etcd_guard_block(struct mer_etcd *c)
{
	pthread_mutex_lock(&c->guard_mu);
	c->guard_mode = GUARD_BLOCK;
	pthread_mutex_unlock(&c->guard_mu);
}

void mer_etcd_guard_clear(struct mer_etcd *c)
{
	pthread_mutex_lock(&c->guard_mu);
	c->guard_mode = GUARD_OFF;
	c->guard_fn = NULL;
	c->guard_arg = NULL;
	pthread_mutex_unlock(&c->guard_mu);
}

uint64_t mer_etcd_fenced_count(const struct mer_etcd *c)
{
	return atomic_load(&((struct mer_etcd *)c)->n_fenced);
}

static int guard_get(struct mer_etcd *c, struct guard *g)
{
	pthread_mutex_lock(&c->guard_mu);
	g->mode = c->guard_mode;
	if (g->mode == GUARD_ON) {
		memcpy(g->key, c->guard_key, c->guard_key_len);
		g->key_len = c->guard_key_len;
		g->rev = c->guard_rev;
	}
	pthread_mutex_unlock(&c->guard_mu);
	return g->mode;
}

/* The guard's compare failed: another epoch holds the key (or none does).
 * The callback runs only while the guard that failed is still the one
 * set, so a late failure cannot unseat a newer epoch. */
static int fenced(struct mer_etcd *c, const struct guard *g,
		  struct mer_etcd_status *st)
{
	mer_etcd_fenced_fn fn = NULL;
	void *arg = NULL;

	atomic_fetch_add(&c->n_fenced, 1);
	pthread_mutex_lock(&c->guard_mu);
	if (c->guard_mode == GUARD_ON && c->guard_rev == g->rev) {
		fn = c->guard_fn;
		arg = c->guard_arg;
	}
	pthread_mutex_unlock(&c->guard_mu);
	status_msg(st, "fenced: the guard key's create_revision is not %lld",
		   (long long)g->rev);
	if (fn)
		fn(arg, g->rev);
	return MER_ENOTLEADER;
}

static int has_write(const struct mer_etcd_op *ops, size_t n)
{
	for (size_t i = 0; i < n; i++)
		if (ops[i].type != MER_ETCD_OP_RANGE)
			return 1;
	return 0;
}

/* "if guard then (if cmps then success else failure)": etcd (3.3+) runs
 * the user's txn nested inside the guard's, so a failed guard is told
 * apart from the user's own compares failing. */
static int txn_nested(struct mer_etcd *c, const struct guard *g,
		      const struct mer_etcd_cmp *cmps, size_t n_cmps,
		      const struct mer_etcd_op *success, size_t n_success,
		      const struct mer_etcd_op *failure, size_t n_failure,
		      struct mer_etcd_txn_result *r, struct mer_etcd_status *st)
{
	struct mer_etcd_cmp gc = {.key = g->key,
				  .key_len = g->key_len,
				  .target = MER_ETCD_CMP_CREATE_REVISION,
				  .result = MER_ETCD_CMP_EQUAL,
				  .number = g->rev};
	json_t *req = json_object(), *inner = json_object(), *resp = NULL;
	json_t *arr = json_array(), *wrap = json_object();
	int rv = MER_ENOMEM;

	if (!req || !inner || !arr || !wrap)
		goto out;
	if ((rv = build_cmps(req, &gc, 1)) ||
	    (rv = build_cmps(inner, cmps, n_cmps)) ||
	    (rv = build_ops(inner, "success", success, n_success)) ||
	    (rv = build_ops(inner, "failure", failure, n_failure)))
		goto out;
	rv = MER_ENOMEM;
	if (json_object_set(wrap, "request_txn", inner) ||
	    json_array_append(arr, wrap) ||
	    json_object_set(req, "success", arr))
		goto out;
	rv = call(c, "/v3/kv/txn", req, 0, &resp, st);
	if (rv != 0)
		goto out;
	if (!get_bool(resp, "succeeded")) {
		rv = fenced(c, g, st);
		goto out;
	}
	const json_t *in = json_object_get(
	    json_array_get(json_object_get(resp, "responses"), 0),
	    "response_txn");
	int ok = get_bool(in, "succeeded");
	/* The inner header is empty: the store revision is the outer's. */
	rv = in ? parse_txn_body(in, ok ? success : failure,
				 ok ? n_success : n_failure, r)
		: MER_EPROTO;
	if (rv == 0)
		rv = header_revision(resp, &r->revision);
	if (rv != 0) {
		mer_etcd_txn_result_clear(r);
		status_msg(st, "unexpected txn response");
	}
out:
	json_decref(resp);
	json_decref(wrap);
	json_decref(arr);
	json_decref(inner);
	json_decref(req);
	return rv;
}

int mer_etcd_txn(struct mer_etcd *c, const struct mer_etcd_cmp *cmps,
		 size_t n_cmps, const struct mer_etcd_op *success,
		 size_t n_success, const struct mer_etcd_op *failure,
		 size_t n_failure, struct mer_etcd_txn_result *r,
		 struct mer_etcd_status *st)
{
	struct mer_etcd_txn_result tmp;
	struct guard g;
	int rv;

	/* Reads are never fenced: followers answer them. */
	if (guard_get(c, &g) == GUARD_OFF ||
	    (!has_write(success, n_success) && !has_write(failure, n_failure)))
		return txn_plain(c, cmps, n_cmps, success, n_success, failure,
				 n_failure, r, st);
	if (!r)
		r = &tmp;
	memset(r, 0, sizeof(*r));
	status_reset(st);
	if ((n_cmps && !cmps) || (n_success && !success) ||
	    (n_failure && !failure))
		return MER_EINVAL;
	if (g.mode == GUARD_BLOCK) {
		atomic_fetch_add(&c->n_fenced, 1);
		status_msg(st, "fenced: writes are blocked (not the leader)");
		return MER_ENOTLEADER;
	}
	if (n_cmps == 0) {
		/* Only the guard can fail: one flat txn. */
		struct mer_etcd_cmp gc = {.key = g.key,
					  .key_len = g.key_len,
					  .target =
					      MER_ETCD_CMP_CREATE_REVISION,
					  .result = MER_ETCD_CMP_EQUAL,
					  .number = g.rev};
		rv = txn_plain(c, &gc, 1, success, n_success, NULL, 0, r, st);
		if (rv == 0 && !r->succeeded) {
			mer_etcd_txn_result_clear(r);
			rv = fenced(c, &g, st);
		}
	} else {
		rv = txn_nested(c, &g, cmps, n_cmps, success, n_success,
				failure, n_failure, r, st);
	}
	if (r == &tmp)
		mer_etcd_txn_result_clear(r);
	return rv;
}

/* A put or delete with the guard on: one txn. 0 when the guard is off
 * (*done = 0: the caller does the plain call). */
static int guarded_single(struct mer_etcd *c, const struct mer_etcd_op *op,
			  int64_t *deleted, int *done,
			  struct mer_etcd_status *st)
{
	struct mer_etcd_txn_result r;
	struct guard g;
	int rv;

	*done = 0;
	if (guard_get(c, &g) == GUARD_OFF)
		return 0;
	*done = 1;
	rv = mer_etcd_txn(c, NULL, 0, op, 1, NULL, 0, &r, st);
	if (rv == 0 && st)
		st->revision = r.revision;
	if (rv == 0 && deleted)
		*deleted = r.n ? r.results[0].deleted : 0;
	mer_etcd_txn_result_clear(&r);
	return rv;
}

int mer_etcd_put_if_mod_revision(struct mer_etcd *c, const void *key,
				 size_t key_len, const void *value,
				 size_t value_len, int64_t lease,
				 int64_t mod_revision,
				 struct mer_etcd_status *st)
{
	struct mer_etcd_cmp cmp = {
	    .key = key,
	    .key_len = key_len,
	    .target = MER_ETCD_CMP_MOD_REVISION,
	    .result = MER_ETCD_CMP_EQUAL,
	    .number = mod_revision,
	};
	struct mer_etcd_op op = {
	    .type = MER_ETCD_OP_PUT,
	    .key = key,
	    .key_len = key_len,
	    .value = value,
	    .value_len = value_len,
	    .lease = lease,
	};
	struct mer_etcd_txn_result r;
	int rv = mer_etcd_txn(c, &cmp, 1, &op, 1, NULL, 0, &r, st);

	if (rv == 0 && !r.succeeded)
		rv = MER_ECOMPARE;
	mer_etcd_txn_result_clear(&r);
	return rv;
}

int mer_etcd_create(struct mer_etcd *c, const void *key, size_t key_len,
		    const void *value, size_t value_len, int64_t lease,
		    struct mer_etcd_status *st)
{
	int rv = mer_etcd_put_if_mod_revision(c, key, key_len, value, value_len,
					      lease, 0, st);

	return rv == MER_ECOMPARE ? MER_EEXIST : rv;
}

int mer_etcd_delete_if_mod_revision(struct mer_etcd *c, const void *key,
				    size_t key_len, int64_t mod_revision,
				    struct mer_etcd_status *st)
{
	struct mer_etcd_cmp cmp = {
	    .key = key,
	    .key_len = key_len,
	    .target = MER_ETCD_CMP_MOD_REVISION,
	    .result = MER_ETCD_CMP_EQUAL,
	    .number = mod_revision,
	};
	struct mer_etcd_op op = {
	    .type = MER_ETCD_OP_DELETE,
	    .key = key,
	    .key_len = key_len,
	};
	struct mer_etcd_txn_result r;
	int rv = mer_etcd_txn(c, &cmp, 1, &op, 1, NULL, 0, &r, st);

	if (rv == 0 && !r.succeeded)
		rv = MER_ECOMPARE;
	mer_etcd_txn_result_clear(&r);
	return rv;
}

/* ---- leases ------------------------------------------------------------- */

static int lease_call(struct mer_etcd *c, const char *path, int64_t id,
		      int64_t ttl, int idempotent, json_t **resp,
		      struct mer_etcd_status *st)
{
	json_t *req = json_object();
	int rv = MER_ENOMEM;

	*resp = NULL;
	status_reset(st);
	if (!req)
		return MER_ENOMEM;
	if ((id && set_i64(req, "ID", id)) || (ttl && set_i64(req, "TTL", ttl)))
		goto out;
	rv = call(c, path, req, idempotent, resp, st);
out:
	json_decref(req);
	return rv;
}

int mer_etcd_lease_grant(struct mer_etcd *c, int64_t ttl_s, int64_t *id,
			 int64_t *granted_ttl_s, struct mer_etcd_status *st)
{
	json_t *resp = NULL;
	int64_t got_id = 0, got_ttl = 0;
	int rv;

	*id = 0;
	if (ttl_s <= 0)
		return MER_EINVAL;
	rv = lease_call(c, "/v3/lease/grant", 0, ttl_s, 0, &resp, st);
	if (rv == 0 && ((rv = get_i64(resp, "ID", &got_id)) == 0) &&
	    ((rv = get_i64(resp, "TTL", &got_ttl)) == 0)) {
		const char *err =
		    json_string_value(json_object_get(resp, "error"));
		if (err && *err) {
			status_msg(st, "%s", err);
			rv = MER_EREMOTE;
		} else if (got_id == 0) {
			rv = MER_EPROTO;
		} else {
			*id = got_id;
			if (granted_ttl_s)
				*granted_ttl_s = got_ttl;
		}
	}
	json_decref(resp);
	return rv;
}

int mer_etcd_lease_keepalive_once(struct mer_etcd *c, int64_t id,
				  int64_t *ttl_s, struct mer_etcd_status *st)
{
	json_t *resp = NULL, *res;
	int64_t ttl = 0;
	int rv;

	if (ttl_s)
		*ttl_s = 0;
	rv = lease_call(c, "/v3/lease/keepalive", id, 0, 1, &resp, st);
	if (rv != 0)
		goto out;
	/* A streaming RPC: the gateway wraps the answer in "result", or
	 * sends {"error": {...}}. */
	res = json_object_get(resp, "result");
	if (!res) {
		parse_error_body(resp, st);
		rv = json_object_get(resp, "error") ? MER_EREMOTE : MER_EPROTO;
		goto out;
	}
	if ((rv = get_i64(res, "TTL", &ttl)))
		goto out;
	/* etcd answers an unknown lease with TTL 0. */
	if (ttl <= 0) {
		status_msg(st, "lease %" PRId64 " expired or revoked", id);
		rv = MER_EEXPIRED;
		goto out;
	}
	if (ttl_s)
		*ttl_s = ttl;
out:
	json_decref(resp);
	return rv;
}

int mer_etcd_lease_revoke(struct mer_etcd *c, int64_t id,
			  struct mer_etcd_status *st)
{
	struct mer_etcd_status local;
	json_t *resp = NULL;
	int rv;

	if (!st)
		st = &local;
	rv = lease_call(c, "/v3/lease/revoke", id, 0, 0, &resp, st);
	/* gRPC NotFound: "etcdserver: requested lease not found" */
	if (rv == MER_EREMOTE && st->grpc_code == 5)
		rv = MER_ENOTFOUND;
	json_decref(resp);
	return rv;
}

int mer_etcd_lease_ttl(struct mer_etcd *c, int64_t id, int64_t *ttl_s,
		       struct mer_etcd_status *st)
{
	json_t *resp = NULL;
	int rv;

	*ttl_s = -1;
	rv = lease_call(c, "/v3/lease/timetolive", id, 0, 1, &resp, st);
	if (rv == 0)
		rv = get_i64(resp, "TTL", ttl_s);
	json_decref(resp);
	return rv;
}

/* ---- lease keeper ------------------------------------------------------- */

struct mer_etcd_keeper {
	struct mer_etcd *c;
	int64_t id;
	long interval_ms;
	mer_etcd_lease_lost_fn lost_fn;
	void *arg;
	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int stop;
	atomic_int lost;
};

static void deadline_ts(long long at_ms, struct timespec *ts)
{
	ts->tv_sec = at_ms / 1000;
	ts->tv_nsec = (long)(at_ms % 1000) * 1000000;
}

/* Waits on cv until at_ms (monotonic) or stop; returns the stop flag. */
static int wait_until(pthread_mutex_t *mu, pthread_cond_t *cv, const int *stop,
		      long long at_ms)
{
	struct timespec ts;
	int s;

	deadline_ts(at_ms, &ts);
	pthread_mutex_lock(mu);
	while (!*stop && now_ms() < at_ms)
		if (pthread_cond_timedwait(cv, mu, &ts) == ETIMEDOUT)
			break;
	s = *stop;
	pthread_mutex_unlock(mu);
	return s;
}

static int cond_init_monotonic(pthread_cond_t *cv)
{
	pthread_condattr_t a;
	int rv;

	pthread_condattr_init(&a);
	pthread_condattr_setclock(&a, CLOCK_MONOTONIC);
	rv = pthread_cond_init(cv, &a);
	pthread_condattr_destroy(&a);
	return rv;
}

static void *keeper_main(void *arg)
{
	struct mer_etcd_keeper *k = arg;
	long long expires = now_ms() + k->interval_ms * 3;
	long long next = now_ms() + k->interval_ms;

	for (;;) {
		struct mer_etcd_status st;
		int64_t ttl = 0;
		int rv;

		if (wait_until(&k->mu, &k->cv, &k->stop, next))
			break;
		rv = mer_etcd_lease_keepalive_once(k->c, k->id, &ttl, &st);
		long long now = now_ms();
		if (rv == 0) {
			expires = now + ttl * 1000;
			next = now + k->interval_ms;
			continue;
		}
		if (rv != MER_EEXPIRED && now < expires) {
			mer_warn("etcd lease keepalive failed",
				 "lease=%" PRId64 " error=%s", k->id,
				 st.message);
			next = now + 250;
			continue;
		}
		mer_warn("etcd lease lost", "lease=%" PRId64 " error=%s", k->id,
			 rv == MER_EEXPIRED ? "expired" : st.message);
		atomic_store(&k->lost, 1);
		if (k->lost_fn)
			k->lost_fn(k->arg, k->id);
		break;
	}
	return NULL;
}

int mer_etcd_keeper_start(struct mer_etcd *c, int64_t id, int64_t ttl_s,
			  mer_etcd_lease_lost_fn lost, void *arg,
			  struct mer_etcd_keeper **out)
{
	struct mer_etcd_keeper *k;

	*out = NULL;
	if (!c || id == 0 || ttl_s <= 0)
		return MER_EINVAL;
	k = calloc(1, sizeof(*k));
	if (!k)
		return MER_ENOMEM;
	k->c = c;
	k->id = id;
	/* A third of the TTL leaves two more tries before expiry. */
	k->interval_ms = (long)(ttl_s * 1000 / 3);
	if (k->interval_ms < 100)
		k->interval_ms = 100;
	k->lost_fn = lost;
	k->arg = arg;
	pthread_mutex_init(&k->mu, NULL);
	if (cond_init_monotonic(&k->cv) != 0) {
		pthread_mutex_destroy(&k->mu);
		free(k);
		return MER_ENOMEM;
	}
	if (pthread_create(&k->thread, NULL, keeper_main, k) != 0) {
		pthread_cond_destroy(&k->cv);
		pthread_mutex_destroy(&k->mu);
		free(k);
		return MER_ENOMEM;
	}
	*out = k;
	return 0;
}

int mer_etcd_keeper_lost(struct mer_etcd_keeper *k)
{
	return atomic_load(&k->lost);
}

void mer_etcd_keeper_stop(struct mer_etcd_keeper *k)
{
	if (!k)
		return;
	pthread_mutex_lock(&k->mu);
	k->stop = 1;
	pthread_cond_broadcast(&k->cv);
	pthread_mutex_unlock(&k->mu);
	pthread_join(k->thread, NULL);
	pthread_cond_destroy(&k->cv);
	pthread_mutex_destroy(&k->mu);
	free(k);
}

/* ---- watch -------------------------------------------------------------- */

struct mer_etcd_watch {
	struct mer_etcd *c;
	unsigned char *key;
	size_t key_len;
	int prefix;
	long retry_min_ms;
	long retry_max_ms;
	mer_etcd_watch_fn fn;
	void *arg;

	pthread_t thread;
	pthread_mutex_t mu;
	pthread_cond_t cv;
	int stop;
	CURLM *multi; /* woken by stop while it polls */

	atomic_int_fast64_t next_rev;
	atomic_uint connects;
	atomic_int ended;

	/* The stream being read: newline-delimited JSON messages. */
	char *buf;
	size_t n;
	size_t cap;
	int created; /* this stream got its "created" message */
};

static void deliver(struct mer_etcd_watch *w, struct mer_etcd_event *ev)
{
	w->fn(w->arg, ev);
}

/* One message of the stream. Returns 0 to go on, non-zero to end this
 * stream (error, or the watch was cancelled). */
static int watch_message(struct mer_etcd_watch *w, const char *line, size_t len)
{
	json_error_t jerr;
	json_t *root = json_loadb(line, len, 0, &jerr), *res, *events;
	int64_t rev = 0, compact = 0;
	int rv = 0;

	if (!root) {
		mer_warn("etcd watch: unreadable message", "error=%s",
			 jerr.text);
		return MER_EPROTO;
	}
	res = json_object_get(root, "result");
	if (!res) {
		struct mer_etcd_status st;
		memset(&st, 0, sizeof(st));
		parse_error_body(root, &st);
		mer_warn("etcd watch: stream error", "error=%s", st.message);
		rv = MER_EREMOTE;
		goto out;
	}
	header_revision(res, &rev);
	if (get_bool(res, "created")) {
		w->created = 1;
		atomic_fetch_add(&w->connects, 1);
		/* Watching "from now": later events have revision > rev.
		 * Remember that, so a reconnect misses nothing. */
		if (atomic_load(&w->next_rev) == 0)
			atomic_store(&w->next_rev, rev + 1);
	}
	if (get_bool(res, "canceled")) {
		struct mer_etcd_event ev;
		const char *why =
		    json_string_value(json_object_get(res, "cancel_reason"));

		memset(&ev, 0, sizeof(ev));
		get_i64(res, "compact_revision", &compact);
		if (compact > 0) {
			ev.kind = MER_ETCD_EV_COMPACTED;
			ev.compact_revision = compact;
			ev.message = "required revision has been compacted";
		} else {
			ev.kind = MER_ETCD_EV_CANCELED;
			ev.message = why ? why : "watch cancelled by etcd";
		}
		atomic_store(&w->ended, 1);
		deliver(w, &ev);
		rv = MER_ECANCELED;
		goto out;
	}
	events = json_object_get(res, "events");
	if (json_array_size(events) == 0) {
		/* A progress notice: everything up to rev was delivered. */
		if (!get_bool(res, "created") && rev > 0 &&
		    rev + 1 > atomic_load(&w->next_rev))
			atomic_store(&w->next_rev, rev + 1);
		goto out;
	}
	for (size_t i = 0; i < json_array_size(events); i++) {
		const json_t *e = json_array_get(events, i);
		const char *type =
		    json_string_value(json_object_get(e, "type"));
		struct mer_etcd_event ev;

		memset(&ev, 0, sizeof(ev));
		ev.kind = type && strcmp(type, "DELETE") == 0
			      ? MER_ETCD_EV_DELETE
			      : MER_ETCD_EV_PUT;
		if ((rv = parse_kv(json_object_get(e, "kv"), &ev.kv)) != 0) {
			mer_warn("etcd watch: bad event", "error=%s",
				 mer_strerror(rv));
			goto out;
		}
		/* A reconnect may replay what a dying stream already
		 * delivered; skip anything older than promised. */
		if (ev.kv.mod_revision >= atomic_load(&w->next_rev)) {
			deliver(w, &ev);
			/* Events of one revision come in one message, so
			 * the next stream may start after this one. */
			atomic_store(&w->next_rev, ev.kv.mod_revision + 1);
		}
		mer_etcd_kv_clear(&ev.kv);
	}
out:
	json_decref(root);
	return rv;
}

static int watch_stopping(struct mer_etcd_watch *w)
{
	int s;

	pthread_mutex_lock(&w->mu);
	s = w->stop;
	pthread_mutex_unlock(&w->mu);
	return s;
}

static size_t on_watch_data(char *data, size_t size, size_t nmemb, void *arg)
{
	struct mer_etcd_watch *w = arg;
	size_t len = size * nmemb, start = 0;

	if (watch_stopping(w))
		return 0;
	if (w->n + len + 1 > w->cap) {
		size_t cap = w->cap ? w->cap : 8192;
		while (cap < w->n + len + 1)
			cap *= 2;
		/* One message bigger than this is not from etcd. */
		if (cap > w->c->max_response)
			return 0;
		char *nb = realloc(w->buf, cap);
		if (!nb)
			return 0;
		w->buf = nb;
		w->cap = cap;
	}
	memcpy(w->buf + w->n, data, len);
	w->n += len;
	for (size_t i = 0; i < w->n; i++) {
		if (w->buf[i] != '\n')
			continue;
		if (i > start && watch_message(w, w->buf + start, i - start))
			return 0;
		start = i + 1;
	}
	memmove(w->buf, w->buf + start, w->n - start);
	w->n -= start;
	return len;
}

static json_t *watch_request(struct mer_etcd_watch *w)
{
	json_t *req = json_object(), *cr = json_object();
	int64_t next = atomic_load(&w->next_rev);

	if (!req || !cr || json_object_set_new(req, "create_request", cr)) {
		json_decref(req);
		return NULL;
	}
	/* progress_notify lets etcd tell us how far we are in sync, so a
	 * reconnect after a quiet spell resumes near the head. */
	if (set_key_range(cr, w->key, w->key_len, w->prefix) ||
	    (next > 0 && set_i64(cr, "start_revision", next)) ||
	    set_true(cr, "progress_notify")) {
		json_decref(req);
		return NULL;
	}
	return req;
}

/* One stream on endpoint ep until it ends or we are stopped. */
static void watch_stream(struct mer_etcd_watch *w, CURL *h, unsigned ep)
{
	char url[512], errbuf[CURL_ERROR_SIZE];
	json_t *req = watch_request(w);
	char *body = req ? json_dumps(req, JSON_COMPACT) : NULL;
	int running = 1;

	json_decref(req);
	if (!body)
		return;
	snprintf(url, sizeof(url), "%s/v3/watch", w->c->eps[ep]);
	errbuf[0] = '\0';
	w->n = 0;
	w->created = 0;
	curl_easy_setopt(h, CURLOPT_URL, url);
	curl_easy_setopt(h, CURLOPT_POSTFIELDS, body);
	curl_easy_setopt(h, CURLOPT_POSTFIELDSIZE_LARGE,
			 (curl_off_t)strlen(body));
	curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, on_watch_data);
	curl_easy_setopt(h, CURLOPT_WRITEDATA, w);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, errbuf);
	curl_easy_setopt(h, CURLOPT_TIMEOUT_MS, 0L);
	curl_multi_add_handle(w->multi, h);
	while (running && !watch_stopping(w)) {
		if (curl_multi_perform(w->multi, &running) != CURLM_OK)
			break;
		if (running &&
		    curl_multi_poll(w->multi, NULL, 0, 1000, NULL) != CURLM_OK)
			break;
	}
	long http = 0;
	CURLMsg *m;
	int left;
	CURLcode result = CURLE_OK;
	while ((m = curl_multi_info_read(w->multi, &left)))
		if (m->msg == CURLMSG_DONE)
			result = m->data.result;
	curl_easy_getinfo(h, CURLINFO_RESPONSE_CODE, &http);
	curl_multi_remove_handle(w->multi, h);
	curl_easy_setopt(h, CURLOPT_ERRORBUFFER, NULL);
	if (!watch_stopping(w) && !atomic_load(&w->ended)) {
		const char *why = errbuf[0] ? errbuf
				  : result != CURLE_OK
				      ? curl_easy_strerror(result)
				      : "stream ended by server";
		if (http != 0 && http != 200 && w->n > 0) {
			w->buf[w->n] = '\0';
			mer_warn("etcd watch refused",
				 "endpoint=%s http=%ld body=%s", w->c->eps[ep],
				 http, w->buf);
		} else {
			mer_warn("etcd watch disconnected",
				 "endpoint=%s error=%s next_revision=%" PRId64,
				 w->c->eps[ep], why,
				 (int64_t)atomic_load(&w->next_rev));
		}
	}
	free(body);
}

static void *watch_main(void *arg)
{
	struct mer_etcd_watch *w = arg;
	struct mer_etcd *c = w->c;
	unsigned ep = atomic_load(&c->preferred) % c->n_eps;
	long backoff = w->retry_min_ms;
	CURL *h = curl_easy_init();

	if (!h) {
		mer_error("etcd watch: no curl handle", NULL);
		return NULL;
	}
	setup_handle(c, h);
	while (!watch_stopping(w) && !atomic_load(&w->ended)) {
		watch_stream(w, h, ep);
		if (watch_stopping(w) || atomic_load(&w->ended))
			break;
		if (w->created) {
			/* The stream worked for a while: reconnect soon. */
			backoff = w->retry_min_ms;
		} else {
			ep = (ep + 1) % c->n_eps;
		}
		if (wait_until(&w->mu, &w->cv, &w->stop, now_ms() + backoff))
			break;
		backoff = backoff * 2 > w->retry_max_ms ? w->retry_max_ms
							: backoff * 2;
	}
	curl_easy_cleanup(h);
	return NULL;
}

int mer_etcd_watch_start(struct mer_etcd *c,
			 const struct mer_etcd_watch_opts *opts,
			 mer_etcd_watch_fn fn, void *arg,
			 struct mer_etcd_watch **out)
{
	struct mer_etcd_watch *w;

	*out = NULL;
	if (!c || !opts || !fn || (opts->key_len == 0 && !opts->prefix) ||
	    opts->start_revision < 0)
		return MER_EINVAL;
	w = calloc(1, sizeof(*w));
	if (!w)
		return MER_ENOMEM;
	w->c = c;
	w->key = malloc(opts->key_len ? opts->key_len : 1);
	w->multi = curl_multi_init();
	if (!w->key || !w->multi)
		goto out_free;
	if (opts->key_len)
		memcpy(w->key, opts->key, opts->key_len);
	w->key_len = opts->key_len;
	w->prefix = opts->prefix;
	w->retry_min_ms = opts->retry_min_ms > 0 ? opts->retry_min_ms : 100;
	w->retry_max_ms = opts->retry_max_ms > 0 ? opts->retry_max_ms : 2000;
	if (w->retry_max_ms < w->retry_min_ms)
		w->retry_max_ms = w->retry_min_ms;
	w->fn = fn;
	w->arg = arg;
	atomic_store(&w->next_rev, opts->start_revision);
	pthread_mutex_init(&w->mu, NULL);
	if (cond_init_monotonic(&w->cv) != 0) {
		pthread_mutex_destroy(&w->mu);
		goto out_free;
	}
	if (pthread_create(&w->thread, NULL, watch_main, w) != 0) {
		pthread_cond_destroy(&w->cv);
		pthread_mutex_destroy(&w->mu);
		goto out_free;
	}
	*out = w;
	return 0;
out_free:
	if (w->multi)
		curl_multi_cleanup(w->multi);
	free(w->key);
	free(w);
	return MER_ENOMEM;
}

int64_t mer_etcd_watch_next_revision(struct mer_etcd_watch *w)
{
	return atomic_load(&w->next_rev);
}

unsigned mer_etcd_watch_connects(struct mer_etcd_watch *w)
{
	return atomic_load(&w->connects);
}

int mer_etcd_watch_ended(struct mer_etcd_watch *w)
{
	return atomic_load(&w->ended);
}

void mer_etcd_watch_stop(struct mer_etcd_watch *w)
{
	if (!w)
		return;
	pthread_mutex_lock(&w->mu);
	w->stop = 1;
	pthread_cond_broadcast(&w->cv);
	pthread_mutex_unlock(&w->mu);
	curl_multi_wakeup(w->multi);
	pthread_join(w->thread, NULL);
	curl_multi_cleanup(w->multi);
	pthread_cond_destroy(&w->cv);
	pthread_mutex_destroy(&w->mu);
	free(w->buf);
	free(w->key);
	free(w);
}
