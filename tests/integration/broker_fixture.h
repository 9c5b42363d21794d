/*
 * Shared by the broker's integration tests and bench/submit_bench.c: a real
 * etcd, a real bin/meridian-broker process configured in a temp dir (tenants
 * with known tokens, the fixture federation, a policy file), and a small
 * libcurl client. Everything it starts is registered with tests/lib/proc so
 * it is stopped even when a case fails. Header-only: each program includes
 * it once.
 */
#ifndef MERIDIAN_TESTS_BROKER_FIXTURE_H
#define MERIDIAN_TESTS_BROKER_FIXTURE_H

#include <curl/curl.h>
#include <jansson.h>
#include <sodium.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "broker/tenants.h"
#include "common/err.h"
#include "common/etcd.h"
#include "tests/lib/etcd_server.h"
#include "tests/lib/proc.h"

#define BFX_ADMIN "admin-token-0123456789abcdef"
#define BFX_ACME "acme-token-0123456789abcdef"
#define BFX_BETA "beta-token-0123456789abcdef"

struct bfx {
	struct t_etcd *etcd;
	struct mer_etcd *cli; /* direct etcd access for checks */
	char *dir;
	char cfg[512], log[512], policy[512], tenants[512];
	char base[64]; /* "http://127.0.0.1:PORT" */
	int port;
	int link_port; /* set before bfx_configure for a link; 0: none */
	char link[64]; /* "tcp://127.0.0.1:PORT" */
	struct t_proc *proc;
	int shared_etcd;	 /* etcd belongs to another bfx (a peer) */
	char agent_brokers[256]; /* agents' "agent.broker"; "" = link */
	char env[128]; /* "NAME=value" for the broker process; "" = none */
};

static const char *bfx_top(void)
{
	const char *t = getenv("MERIDIAN_TOP");
	return t && *t ? t : ".";
}

static inline int bfx_write(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return MER_EIO;
	fputs(text, f);
	return fclose(f) == 0 ? 0 : MER_EIO;
}

static inline int bfx_copy(const char *from, const char *to)
{
	char *text = NULL;
	int rv = t_read_file(from, &text, NULL);
	if (rv == 0)
		rv = bfx_write(to, text);
	free(text);
	return rv;
}

/* Writes the config (extra: more top-level members, e.g.
 * "\"jobs\": {\"batch_max\": 1},", or "") and the files it names. */
static inline int bfx_configure(struct bfx *f, const char *extra)
{
	char a[MER_API_HASH_HEX], c[MER_API_HASH_HEX], d[MER_API_HASH_HEX];
	char text[4096], path[600];
	int rv;

	mer_api_token_hash_hex(BFX_ADMIN, a);
	mer_api_token_hash_hex(BFX_ACME, c);
	mer_api_token_hash_hex(BFX_BETA, d);
	snprintf(f->tenants, sizeof(f->tenants), "%s/tenants.json", f->dir);
	snprintf(text, sizeof(text),
		 "{\"tenants\": ["
		 "{\"name\": \"ops\", \"role\": \"admin\", "
		 "\"token_hashes\": [\"%s\"]},"
		 "{\"name\": \"acme\", \"role\": \"tenant\", "
		 "\"token_hashes\": [\"%s\"]},"
		 "{\"name\": \"beta\", \"role\": \"tenant\", "
		 "\"token_hashes\": [\"%s\"]}]}",
		 a, c, d);
	if ((rv = bfx_write(f->tenants, text)))
		return rv;
	snprintf(f->policy, sizeof(f->policy), "%s/policy.json", f->dir);
	snprintf(path, sizeof(path), "%s/policy/examples/cost-first.json",
		 bfx_top());
	if ((rv = bfx_copy(path, f->policy)))
		return rv;
	if ((rv = t_free_port(&f->port)))
		return rv;
	snprintf(f->base, sizeof(f->base), "http://127.0.0.1:%d", f->port);
	snprintf(f->cfg, sizeof(f->cfg), "%s/broker.json", f->dir);
	snprintf(f->log, sizeof(f->log), "%s/broker.log", f->dir);
	if (f->link_port)
		snprintf(f->link, sizeof(f->link), "tcp://127.0.0.1:%d",
			 f->link_port);
	snprintf(text, sizeof(text),
		 "{\"listen\": {\"http\": \"%s\", \"link\": \"%s\"},"
		 " \"etcd\": {\"endpoints\": [\"%s\"]},"
		 " \"key_file\": \"%s/broker.key\","
		 " \"policy_file\": \"%s\","
		 " \"tenants_file\": \"%s\","
		 " \"federation_file\": "
		 "\"%s/tests/fixtures/broker/federation.json\","
		 " %s"
		 " \"log_level\": \"%s\"}",
		 f->base, f->link, t_etcd_url(f->etcd), f->dir, f->policy,
		 f->tenants, bfx_top(), extra ? extra : "",
		 getenv("BFX_LOG") ? getenv("BFX_LOG") : "info");
	return bfx_write(f->cfg, text);
}

/* Starts (or restarts) the broker process and waits for /healthz. */
static inline int bfx_spawn(struct bfx *f)
{
	char bin[600], url[128];
	const char *dir = getenv("MERIDIAN_BIN");
	int rv;

	snprintf(bin, sizeof(bin), "%s/meridian-broker",
		 dir && *dir ? dir : "bin");
	char *argv[] = {bin, "--config", f->cfg, NULL};
	char *env[] = {f->env, NULL};
	if ((rv = t_proc_spawn(bin, argv, f->env[0] ? env : NULL, f->log,
			       &f->proc)))
		return rv;
	snprintf(url, sizeof(url), "%s/readyz", f->base);
	rv = t_wait_http(url, NULL, 20000, f->proc);
	if (rv) {
		char *log = NULL;
		if (t_read_file(f->log, &log, NULL) == 0)
			fprintf(stderr, "--- broker log ---\n%s\n", log);
		free(log);
	}
	return rv;
}

static inline int bfx_start_opts(struct bfx *f, const char *extra,
				 int with_link)
{
	int rv;

	memset(f, 0, sizeof(*f));
	if (with_link && (rv = t_free_port(&f->link_port)))
		return rv;
	if ((rv = t_etcd_start(&f->etcd)) || (rv = t_tmpdir("broker", &f->dir)))
		return rv;
	struct mer_etcd_opts o = {.endpoints = t_etcd_url(f->etcd)};
	if ((rv = mer_etcd_open(&o, &f->cli)))
		return rv;
	if ((rv = bfx_configure(f, extra)))
		return rv;
	return bfx_spawn(f);
}

static inline int bfx_start(struct bfx *f, const char *extra)
{
	return bfx_start_opts(f, extra, 0);
}

/*
 * A second broker for leader election tests: the same etcd and prefix as
 * f (running), its own temp dir, ports and log, and f's broker key (the
 * brokers of one federation share it, so agents' pins hold). extra as for
 * bfx_configure. Waits for its /readyz. Free with bfx_free (f's etcd is
 * left alone).
 */
static inline int bfx_start_peer(struct bfx *p, const struct bfx *f,
				 const char *extra, int with_link)
{
	char from[600], to[600];
	int rv;

	memset(p, 0, sizeof(*p));
	p->etcd = f->etcd;
	p->shared_etcd = 1;
	if (with_link && (rv = t_free_port(&p->link_port)))
		return rv;
	if ((rv = t_tmpdir("broker", &p->dir)))
		return rv;
	struct mer_etcd_opts o = {.endpoints = t_etcd_url(f->etcd)};
	if ((rv = mer_etcd_open(&o, &p->cli)))
		return rv;
	if ((rv = bfx_configure(p, extra)))
		return rv;
	snprintf(from, sizeof(from), "%s/broker.key", f->dir);
	snprintf(to, sizeof(to), "%s/broker.key", p->dir);
	if ((rv = bfx_copy(from, to)))
		return rv;
	if (chmod(to, 0600) != 0)
		return MER_EIO;
	return bfx_spawn(p);
}

/* Kills the broker with sig (SIGKILL for a crash) and reaps it. */
static inline void bfx_kill(struct bfx *f, int sig)
{
	if (!f->proc)
		return;
	kill(t_proc_pid(f->proc), sig);
	t_proc_stop(f->proc, 5000, NULL);
	f->proc = NULL;
}

/* Stops the broker with SIGTERM and returns its exit status (0 when it
 * shut down cleanly; sanitizer builds exit non-zero on leaks or errors),
 * or -1 when it had to be killed. */
static inline int bfx_stop_checked(struct bfx *f)
{
	int status = 0, rv;

	if (!f->proc)
		return -1;
	rv = t_proc_stop(f->proc, 10000, &status);
	f->proc = NULL;
	if (rv || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

static inline void bfx_free(struct bfx *f)
{
	bfx_kill(f, SIGTERM);
	mer_etcd_close(f->cli);
	if (!f->shared_etcd)
		t_etcd_free(f->etcd);
	if (f->dir && !getenv("MERIDIAN_KEEP_TMP"))
		t_rmtree(f->dir);
	free(f->dir);
	memset(f, 0, sizeof(*f));
}

/* ---- etcd history ------------------------------------------------------ */

/* key as it was at revision rev (0: now) into *kv (cleared by the caller
 * with mer_etcd_kv_clear): MER_ENOTFOUND when it did not exist then. For
 * checks that two things were written by one txn (same mod_revision) or in
 * a given order. */
static inline int bfx_get_at(const struct bfx *f, const char *key, int64_t rev,
			     struct mer_etcd_kv *kv)
{
	struct mer_etcd_range r = {0};
	int rv = mer_etcd_range_prefix(f->cli, key, strlen(key), NULL, 0, 0,
				       rev, 0, &r, NULL);

	memset(kv, 0, sizeof(*kv));
	if (rv == 0)
		rv = MER_ENOTFOUND;
	for (size_t i = 0; i < r.n && rv == MER_ENOTFOUND; i++) {
		if (r.kvs[i].key_len != strlen(key))
			continue; /* a longer key under the same prefix */
		*kv = r.kvs[i];
		memset(&r.kvs[i], 0, sizeof(r.kvs[i]));
		rv = 0;
	}
	mer_etcd_range_clear(&r);
	return rv;
}

/* The revision in (from, to] at which key, present at from, was deleted:
 * the first one where it is absent (it must stay absent up to to), or 0
 * when it is still there at to. */
static inline int64_t bfx_deleted_at(const struct bfx *f, const char *key,
				     int64_t from, int64_t to)
{
	struct mer_etcd_kv kv;

	if (bfx_get_at(f, key, to, &kv) == 0) {
		mer_etcd_kv_clear(&kv);
		return 0;
	}
	while (to - from > 1) {
		int64_t mid = from + (to - from) / 2;
		if (bfx_get_at(f, key, mid, &kv) == 0)
			from = mid;
		else
			to = mid;
		mer_etcd_kv_clear(&kv);
	}
	return to;
}

/* etcd's current revision (0 when it cannot be read). */
static inline int64_t bfx_revision(const struct bfx *f)
{
	struct mer_etcd_status st = {0};
	struct mer_etcd_kv kv;

	mer_etcd_get(f->cli, "/", 1, &kv, &st);
	mer_etcd_kv_clear(&kv);
	return st.revision;
}

/* ---- client ------------------------------------------------------------ */

struct bres {
	long status;
	char *body;
	size_t len;
	char hdrs[4096];
	size_t hlen;
	json_t *json;
};

static inline size_t bres_body(char *p, size_t sz, size_t n, void *arg)
{
	struct bres *r = arg;
	char *nb = realloc(r->body, r->len + sz * n + 1);
	if (!nb)
		return 0;
	memcpy(nb + r->len, p, sz * n);
	r->len += sz * n;
	nb[r->len] = 0;
	r->body = nb;
	return sz * n;
}

static inline size_t bres_hdr(char *p, size_t sz, size_t n, void *arg)
{
	struct bres *r = arg;
	size_t k = sz * n;
	if (r->hlen + k < sizeof(r->hdrs)) {
		memcpy(r->hdrs + r->hlen, p, k);
		r->hlen += k;
		r->hdrs[r->hlen] = 0;
	}
	return k;
}

static inline void bres_clear(struct bres *r)
{
	free(r->body);
	json_decref(r->json);
	memset(r, 0, sizeof(*r));
}

/* One request; reuse may be a handle kept by the caller (or NULL). Returns
 * 0 when an answer came (any status). */
static inline int bfx_req_on(CURL *reuse, const struct bfx *f,
			     const char *method, const char *path,
			     const char *token, const char *body,
			     size_t body_len, const char *idem, struct bres *r)
{
	CURL *c = reuse ? reuse : curl_easy_init();
	struct curl_slist *h = NULL;
	char url[1024], line[1200];
	CURLcode cc;

	memset(r, 0, sizeof(*r));
	if (!c)
		return MER_ENOMEM;
	if (reuse)
		curl_easy_reset(c);
	snprintf(url, sizeof(url), "%s%s", f->base, path);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_TIMEOUT_MS, 30000L);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, bres_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, r);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, bres_hdr);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, r);
	if (body) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE_LARGE,
				 (curl_off_t)body_len);
		h = curl_slist_append(h, "Content-Type: application/json");
		h = curl_slist_append(h, "Expect:");
	}
	if (token) {
		snprintf(line, sizeof(line), "Authorization: Bearer %s", token);
		h = curl_slist_append(h, line);
	}
	if (idem) {
		snprintf(line, sizeof(line), "Idempotency-Key: %s", idem);
		h = curl_slist_append(h, line);
	}
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	cc = curl_easy_perform(c);
	if (cc == CURLE_OK)
		curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &r->status);
	curl_slist_free_all(h);
	if (!reuse)
		curl_easy_cleanup(c);
	if (cc != CURLE_OK)
		return MER_EUNREACHABLE;
	if (r->body)
		r->json = json_loads(r->body, 0, NULL);
	return 0;
}

static inline int bfx_req(const struct bfx *f, const char *method,
			  const char *path, const char *token, const char *body,
			  const char *idem, struct bres *r)
{
	return bfx_req_on(NULL, f, method, path, token, body,
			  body ? strlen(body) : 0, idem, r);
}

static inline const char *bres_str(const struct bres *r, const char *key)
{
	return json_string_value(json_object_get(r->json, key));
}

/* How many ranges f's etcd has served (its etcd_mvcc_range_total, from
 * its /metrics), or -1. */
static inline long long bfx_etcd_ranges(const struct bfx *f)
{
	struct bfx e;
	struct bres r;
	long long n = -1;

	memset(&e, 0, sizeof(e));
	snprintf(e.base, sizeof(e.base), "%s", t_etcd_url(f->etcd));
	if (bfx_req(&e, "GET", "/metrics", NULL, NULL, NULL, &r))
		return -1;
	const char *p = r.body && r.status == 200
			    ? strstr(r.body, "\netcd_mvcc_range_total ")
			    : NULL;
	if (p) {
		char *end = NULL;
		p += strlen("\netcd_mvcc_range_total ");
		double v = strtod(p, &end);
		if (end != p)
			n = (long long)v;
	}
	bres_clear(&r);
	return n;
}

/* Where the broker's log has needle at or after offset from: the offset
 * of its first byte, or -1 (no such line yet, or no log). */
static inline long bfx_log_find(const struct bfx *f, long from,
				const char *needle)
{
	char *log = NULL;
	size_t len = 0;
	long at = -1;

	if (t_read_file(f->log, &log, &len) == 0 && from >= 0 &&
	    (size_t)from <= len) {
		const char *p = strstr(log + from, needle);
		if (p)
			at = (long)(p - log);
	}
	free(log);
	return at;
}

/* The broker log's size now (the offset for bfx_log_find), or 0. */
static inline long bfx_log_size(const struct bfx *f)
{
	char *log = NULL;
	size_t len = 0;

	if (t_read_file(f->log, &log, &len) != 0)
		len = 0;
	free(log);
	return (long)len;
}

/* A site agent for the broker tests: a sim site, joined with a token from
 * POST /v1/tokens exactly as a site admin would, then run from
 * bin/meridian-agent with its config and state under f->dir. */
struct bfx_site {
	const char *name, *region;
	const char *gpu_price, *core_price; /* JSON numbers, e.g. "2.0" */
};

/* An integer member of o (0 when absent). */
static inline long long bfx_ival(const json_t *o, const char *k)
{
	return json_integer_value(json_object_get(o, k));
}

static inline const char *bfx_nz(const char *s)
{
	return s ? s : "";
}

static inline void bfx_agent_paths(const struct bfx *f, const char *name,
				   char *bin, char *cfg, char *log, size_t n)
{
	const char *dir = getenv("MERIDIAN_BIN");

	snprintf(bin, n, "%s/meridian-agent", dir && *dir ? dir : "bin");
	snprintf(cfg, n, "%s/%s.json", f->dir, name);
	snprintf(log, n, "%s/%s.log", f->dir, name);
}

/* Starts a joined site's agent again with the config and state that
 * bfx_agent_join wrote. */
static inline int bfx_agent_respawn(const struct bfx *f, const char *name,
				    struct t_proc **out)
{
	char bin[600], cfg[600], log[600];

	bfx_agent_paths(f, name, bin, cfg, log, sizeof(bin));
	char *argv[] = {bin, "--config", cfg, NULL};
	return t_proc_spawn(bin, argv, NULL, log, out);
}

static inline int bfx_agent_join(const struct bfx *f, const struct bfx_site *s,
				 struct t_proc **out)
{
	char bin[600], cfg[600], log[600], sim[600], text[4096];
	char token[128], fp[96];
	struct bres r;
	struct t_proc *j;
	int rv, status = 0;

	snprintf(text, sizeof(text),
		 "{\"site\": \"%s\", \"region\": \"%s\", \"ttl\": \"10m\"}",
		 s->name, s->region);
	if ((rv =
		 bfx_req(f, "POST", "/v1/tokens", BFX_ADMIN, text, NULL, &r)) ||
	    r.status != 201) {
		bres_clear(&r);
		return rv ? rv : MER_EREMOTE;
	}
	snprintf(token, sizeof(token), "%s", bfx_nz(bres_str(&r, "token")));
	snprintf(fp, sizeof(fp), "%s", bfx_nz(bres_str(&r, "broker_key")));
	bres_clear(&r);

	bfx_agent_paths(f, s->name, bin, cfg, log, sizeof(bin));
	snprintf(sim, sizeof(sim), "%s/tests/fixtures/broker/sim-site.json",
		 bfx_top());
	snprintf(text, sizeof(text),
		 "{\"site\": {\"name\": \"%s\", \"region\": \"%s\"},"
		 " \"scheduler\": {\"kind\": \"sim\", \"sim_file\": \"%s\","
		 " \"time_scale\": 100},"
		 " \"prices\": {\"gpu_hour\": {\"a100\": %s}, "
		 "\"core_hour\": %s},"
		 " \"agent\": {\"state_file\": \"%s/%s.state\","
		 " \"key_file\": \"%s/%s.key\", \"broker\": \"%s\","
		 " \"broker_key\": \"%s\", \"report_interval\": \"1s\","
		 " \"poll_interval\": \"200ms\"}}",
		 s->name, s->region, sim, s->gpu_price, s->core_price, f->dir,
		 s->name, f->dir, s->name,
		 f->agent_brokers[0] ? f->agent_brokers : f->link, fp);
	if ((rv = bfx_write(cfg, text)))
		return rv;
	char *jargv[] = {
	    bin,   "join",	   "--broker", (char *)f->link, "--token",
	    token, "--broker-key", fp,	       "--config",	cfg,
	    NULL};
	sodium_memzero(text, sizeof(text));
	if ((rv = t_proc_spawn(bin, jargv, NULL, log, &j)))
		return rv;
	for (int k = 0; k < 200 && !t_proc_exited(j, &status); k++)
		t_sleep_ms(50);
	t_proc_stop(j, 1000, &status);
	sodium_memzero(token, sizeof(token));
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return MER_EAUTH;
	return bfx_agent_respawn(f, s->name, out);
}

/* Whether f's API shows site name with a summary (its agent reported). */
static inline int bfx_site_reported(const struct bfx *f, const char *name)
{
	struct bres r;
	char path[128];
	int ok;

	snprintf(path, sizeof(path), "/v1/sites/%s", name);
	if (bfx_req(f, "GET", path, BFX_ADMIN, NULL, NULL, &r))
		return 0;
	ok = r.status == 200 &&
	     json_is_object(json_object_get(r.json, "summary"));
	bres_clear(&r);
	return ok;
}

/* Waits up to ms for sites a and b to have reported; whether both have. */
static inline int bfx_sites_reported(const struct bfx *f, const char *a,
				     const char *b, long long ms)
{
	long long end = t_now_ms() + ms;

	while (t_now_ms() < end &&
	       !(bfx_site_reported(f, a) && bfx_site_reported(f, b)))
		t_sleep_ms(100);
	return bfx_site_reported(f, a) && bfx_site_reported(f, b);
}

/* Prints f's logs <dir>/<names[i]>.log to stderr (a failure's evidence). */
static inline void bfx_dump_logs(const struct bfx *f, const char *const *names,
				 int n)
{
	char path[700], *log = NULL;

	if (!f->dir)
		return;
	for (int i = 0; i < n; i++) {
		snprintf(path, sizeof(path), "%s/%s.log", f->dir, names[i]);
		if (t_read_file(path, &log, NULL) == 0)
			fprintf(stderr, "--- %s ---\n%s\n", names[i], log);
		free(log);
		log = NULL;
	}
}

/*
 * POSTs body as a job with token: *status gets the answer's status and id
 * its "id" ("" when none). bfx_req's result.
 */
static inline int bfx_submit(const struct bfx *f, const char *token,
			     const char *body, long *status, char *id,
			     size_t idlen)
{
	struct bres r;
	int rv;

	id[0] = '\0';
	*status = 0;
	if ((rv = bfx_req(f, "POST", "/v1/jobs", token, body, NULL, &r)))
		return rv;
	*status = r.status;
	snprintf(id, idlen, "%s", bfx_nz(bres_str(&r, "id")));
	bres_clear(&r);
	return 0;
}

/*
 * Polls path with token for up to ms until the job's state is succeeded or
 * failed: *job gets that record (a reference), NULL on timeout. When
 * saw_running is not NULL it is set if the job was seen running. bfx_req's
 * error when a poll got no answer.
 */
static inline int bfx_wait_ended(const struct bfx *f, const char *path,
				 const char *token, long long ms, json_t **job,
				 int *saw_running)
{
	long long end = t_now_ms() + ms;
	struct bres r;
	int rv;

	*job = NULL;
	while (t_now_ms() < end) {
		if ((rv = bfx_req(f, "GET", path, token, NULL, NULL, &r)))
			return rv;
		const char *st = bres_str(&r, "state");
		if (saw_running)
			*saw_running |= st && strcmp(st, "running") == 0;
		if (st && (strcmp(st, "succeeded") == 0 ||
			   strcmp(st, "failed") == 0)) {
			*job = json_incref(r.json);
			bres_clear(&r);
			return 0;
		}
		bres_clear(&r);
		t_sleep_ms(100);
	}
	return 0;
}

#endif
