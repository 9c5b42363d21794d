/*
 * The broker's life cycle: config, etcd, store, membership, tenants, the
 * policy in force (versioned in etcd) and the federation snapshot the
 * placer and dry-run use. Request handling is api.c; placement is placer.c.
 */
#include "broker/broker.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/json.h"
#include "common/log.h"

#define KEY_MAX 320

static void on_stored(void *arg, const char *id)
{
	struct mer_broker *b = arg;

	mer_placer_enqueue(b, id);
}

static void observe_etcd(void *arg, double seconds)
{
	struct mer_broker *b = arg;

	mer_metrics_observe(b->metrics, MER_H_ETCD, seconds);
}

static void policy_ref_free(struct mer_policy_ref *p)
{
	if (!p)
		return;
	mer_policy_free(p->pol);
	json_decref(p->doc);
	free(p);
}

struct mer_policy_ref *mer_broker_policy_get(struct mer_broker *b)
{
	struct mer_policy_ref *p;

	pthread_rwlock_rdlock(&b->lock);
	p = b->policy;
	if (p)
		__atomic_add_fetch(&p->refs, 1, __ATOMIC_SEQ_CST);
	pthread_rwlock_unlock(&b->lock);
	return p;
}

void mer_broker_policy_put(struct mer_broker *b, struct mer_policy_ref *p)
{
	(void)b;
	if (p && __atomic_sub_fetch(&p->refs, 1, __ATOMIC_SEQ_CST) == 0)
		policy_ref_free(p);
}

static void policy_install(struct mer_broker *b, struct mer_policy_ref *p)
{
	struct mer_policy_ref *old;

	p->refs = 1;
	pthread_rwlock_wrlock(&b->lock);
	old = b->policy;
	b->policy = p;
	pthread_rwlock_unlock(&b->lock);
	mer_broker_policy_put(b, old);
	mer_info("policy in force", "version=%lld name=%s",
		 (long long)p->version, p->pol->version);
	mer_placer_kick(b);
}

/* Parses and validates a policy document, with file:line:col errors. */
static int policy_parse(const char *name, const char *text, size_t len,
			struct mer_policy_ref **out, char *err, size_t errlen)
{
	struct mer_json_doc doc;
	struct mer_policy_ref *p;
	int rv;

	*out = NULL;
	rv = mer_json_doc_parse(name, text, len, 1u << 20, 32, &doc, err,
				errlen);
	if (rv)
		return rv;
	p = calloc(1, sizeof(*p));
	if (!p) {
		mer_json_doc_free(&doc);
		return MER_ENOMEM;
	}
	rv = mer_policy_from_json(doc.root, &doc, &p->pol, err, errlen);
	if (rv == 0)
		p->doc = json_incref(doc.root);
	mer_json_doc_free(&doc);
	if (rv) {
		free(p);
		return rv;
	}
	*out = p;
	return 0;
}

int mer_broker_policy_apply(struct mer_broker *b, const char *name,
			    const char *text, size_t len, const char *by,
			    int64_t *version, char *err, size_t errlen)
{
	char cur_key[KEY_MAX], ver_key[KEY_MAX];
	struct mer_policy_ref *p = NULL;
	struct mer_etcd_kv kv = {0};
	int64_t mod = 0, next = 1;
	int rv;

	rv = policy_parse(name, text, len, &p, err, errlen);
	if (rv)
		return rv;
	mer_store_key(b->store, cur_key, sizeof(cur_key), "policy/current");
	for (int tries = 0; tries < 8; tries++) {
		json_t *cur = NULL, *ptr = NULL, *ver = NULL;
		char *pv = NULL, *vv = NULL;
		struct mer_etcd_txn_result r = {0};
		long long now = (long long)time(NULL);

		rv = mer_etcd_get(b->etcd, cur_key, strlen(cur_key), &kv, NULL);
		if (rv == 0) {
			mod = kv.mod_revision;
			cur = json_loadb(kv.value, kv.value_len, 0, NULL);
			next = json_integer_value(
				   json_object_get(cur, "version")) +
			       1;
			json_decref(cur);
		} else if (rv == MER_ENOTFOUND) {
			mod = 0;
			next = 1;
		} else {
			snprintf(err, errlen, "etcd: %s", mer_strerror(rv));
			goto out;
		}
		mer_etcd_kv_clear(&kv);
		mer_store_key(b->store, ver_key, sizeof(ver_key),
			      "policy/versions/%010lld", (long long)next);
		ptr = json_pack("{s:I, s:s, s:I, s:s}", "version",
				(json_int_t)next, "name", p->pol->version,
				"applied_at", (json_int_t)now, "by",
				by ? by : "");
		ver = json_pack("{s:I, s:s, s:I, s:s, s:O}", "version",
				(json_int_t)next, "name", p->pol->version,
				"applied_at", (json_int_t)now, "by",
				by ? by : "", "policy", p->doc);
		pv = ptr ? mer_json_dumps(ptr) : NULL;
		vv = ver ? mer_json_dumps(ver) : NULL;
		if (!pv || !vv) {
			rv = MER_ENOMEM;
		} else {
			struct mer_etcd_cmp c = {.key = cur_key,
						 .key_len = strlen(cur_key),
						 .target =
						     MER_ETCD_CMP_MOD_REVISION,
						 .result = MER_ETCD_CMP_EQUAL,
						 .number = mod};
			struct mer_etcd_op ops[2] = {
			    {.type = MER_ETCD_OP_PUT,
			     .key = ver_key,
			     .key_len = strlen(ver_key),
			     .value = vv,
			     .value_len = strlen(vv)},
			    {.type = MER_ETCD_OP_PUT,
			     .key = cur_key,
			     .key_len = strlen(cur_key),
			     .value = pv,
			     .value_len = strlen(pv)}};
			rv = mer_etcd_txn(b->etcd, &c, 1, ops, 2, NULL, 0, &r,
					  NULL);
			if (rv == 0 && !r.succeeded)
				rv = MER_ECOMPARE;
			mer_etcd_txn_result_clear(&r);
		}
		json_decref(ptr);
		json_decref(ver);
		free(pv);
		free(vv);
		if (rv != MER_ECOMPARE)
			break;
	}
	if (rv) {
		snprintf(err, errlen, "policy not stored: %s",
			 mer_strerror(rv));
		goto out;
	}
	p->version = next;
	p->applied_at = (long long)time(NULL);
	if (version)
		*version = next;
	policy_install(b, p);
	p = NULL;
out:
	if (p)
		policy_ref_free(p);
	return rv;
}

int mer_broker_policy_load(struct mer_broker *b, char *err, size_t errlen)
{
	char key[KEY_MAX];
	struct mer_etcd_kv kv = {0};
	struct mer_policy_ref *p = NULL;
	json_t *cur = NULL;
	int rv;

	mer_store_key(b->store, key, sizeof(key), "policy/current");
	rv = mer_etcd_get(b->etcd, key, strlen(key), &kv, NULL);
	if (rv == 0) {
		json_t *ptr = json_loadb(kv.value, kv.value_len, 0, NULL);
		json_int_t n =
		    json_integer_value(json_object_get(ptr, "version"));
		mer_etcd_kv_clear(&kv);
		json_decref(ptr);
		mer_store_key(b->store, key, sizeof(key),
			      "policy/versions/%010lld", (long long)n);
		rv = mer_etcd_get(b->etcd, key, strlen(key), &kv, NULL);
		if (rv == 0) {
			cur = json_loadb(kv.value, kv.value_len, 0, NULL);
			mer_etcd_kv_clear(&kv);
		}
	}
	if (rv && rv != MER_ENOTFOUND) {
		snprintf(err, errlen, "etcd: reading the policy: %s",
			 mer_strerror(rv));
		return rv;
	}
	if (b->cfg.policy_file && *b->cfg.policy_file) {
		char *text = NULL;
		size_t len = 0;
		FILE *f = fopen(b->cfg.policy_file, "rb");
		json_t *fj = NULL;

		if (f) {
			struct mer_json_doc d;
			fclose(f);
			rv = mer_json_doc_load(b->cfg.policy_file, 1u << 20, 32,
					       &d, err, errlen);
			if (rv) {
				json_decref(cur);
				return rv;
			}
			text = strndup(d.text, d.len);
			len = d.len;
			fj = json_incref(d.root);
			mer_json_doc_free(&d);
		}
		if (!text) {
			json_decref(cur);
			snprintf(err, errlen, "%s: cannot read",
				 b->cfg.policy_file);
			return MER_EIO;
		}
		if (cur && json_equal(fj, json_object_get(cur, "policy"))) {
			json_decref(fj);
			free(text);
		} else {
			json_decref(cur);
			json_decref(fj);
			rv = mer_broker_policy_apply(b, b->cfg.policy_file,
						     text, len, "policy_file",
						     NULL, err, errlen);
			if (rv == MER_ENOTLEADER) {
				/* A follower: the file's policy in memory
				 * (dry-runs), versioned when it leads. */
				rv = policy_parse(b->cfg.policy_file, text, len,
						  &p, err, errlen);
				if (rv == 0)
					policy_install(b, p);
			}
			free(text);
			return rv;
		}
	}
	if (cur) {
		char *t = mer_json_dumps(json_object_get(cur, "policy"));
		rv = t ? policy_parse("etcd policy", t, strlen(t), &p, err,
				      errlen)
		       : MER_ENOMEM;
		free(t);
		if (rv == 0) {
			p->version =
			    json_integer_value(json_object_get(cur, "version"));
			p->applied_at = json_integer_value(
			    json_object_get(cur, "applied_at"));
		}
		json_decref(cur);
		if (rv)
			return rv;
	} else {
		p = calloc(1, sizeof(*p));
		if (!p || mer_policy_default(&p->pol)) {
			free(p);
			return MER_ENOMEM;
		}
		p->doc = json_pack("{s:s}", "version", "builtin-default");
	}
	policy_install(b, p);
	return 0;
}

void mer_broker_policy_follow(struct mer_broker *b)
{
	char key[KEY_MAX];
	struct mer_etcd_kv kv = {0};
	struct mer_policy_ref *p = NULL, *cur;
	json_t *ptr, *ver = NULL;
	char err[256];

	mer_store_key(b->store, key, sizeof(key), "policy/current");
	if (mer_etcd_get(b->etcd, key, strlen(key), &kv, NULL) != 0)
		return;
	ptr = json_loadb(kv.value, kv.value_len, 0, NULL);
	mer_etcd_kv_clear(&kv);
	json_int_t n = json_integer_value(json_object_get(ptr, "version"));
	json_decref(ptr);
	cur = mer_broker_policy_get(b);
	int same = cur && cur->version == (int64_t)n;
	mer_broker_policy_put(b, cur);
	if (same || n <= 0)
		return;
	mer_store_key(b->store, key, sizeof(key), "policy/versions/%010lld",
		      (long long)n);
	if (mer_etcd_get(b->etcd, key, strlen(key), &kv, NULL) == 0)
		ver = json_loadb(kv.value, kv.value_len, 0, NULL);
	mer_etcd_kv_clear(&kv);
	char *t = ver ? mer_json_dumps(json_object_get(ver, "policy")) : NULL;
	if (t && policy_parse("etcd policy", t, strlen(t), &p, err,
			      sizeof(err)) == 0) {
		p->version = n;
		p->applied_at =
		    json_integer_value(json_object_get(ver, "applied_at"));
		policy_install(b, p);
	}
	free(t);
	json_decref(ver);
}

/* ---- federation -------------------------------------------------------- */

static long long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

void mer_broker_fed_put(struct mer_fed_ref *r)
{
	if (r && __atomic_sub_fetch(&r->refs, 1, __ATOMIC_SEQ_CST) == 0) {
		mer_fed_free(r->fed);
		free(r);
	}
}

void mer_broker_fed_invalidate(struct mer_broker *b)
{
	pthread_mutex_lock(&b->fmu);
	b->fed_gen++;
	pthread_mutex_unlock(&b->fmu);
}

int mer_broker_fed_get(struct mer_broker *b, long max_age_ms,
		       struct mer_fed_ref **out, char *err, size_t errlen)
{
	struct mer_fed_ref *r;
	long long now = mono_ms();

	*out = NULL;
	pthread_mutex_lock(&b->fmu);
	r = b->fed_cache;
	uint64_t gen = b->fed_gen;
	/* Readers that accept some age take the cached snapshot while
	 * another thread rebuilds it, so a busy API does not build one per
	 * request when it expires. */
	if (r && max_age_ms > 0 && r->gen == gen &&
	    (now - r->built_ms <= max_age_ms || b->fed_building)) {
		__atomic_add_fetch(&r->refs, 1, __ATOMIC_SEQ_CST);
		pthread_mutex_unlock(&b->fmu);
		*out = r;
		return 0;
	}
	int builder = max_age_ms > 0 && !b->fed_building;
	if (builder)
		b->fed_building = 1;
	pthread_mutex_unlock(&b->fmu);
	/* The placer's builder: in-memory summaries and cached site records,
	 * not a range over etcd per rebuild. */
	return mer_broker_fed_build(b, gen, now, builder, mer_placer_snapshot,
				    out, err, errlen);
}

int mer_broker_fed_build(struct mer_broker *b, uint64_t gen, long long now,
			 int builder, mer_broker_fed_builder build,
			 struct mer_fed_ref **out, char *err, size_t errlen)
{
	struct mer_fed_ref *r, *old;
	int rv;

	*out = NULL;
	r = calloc(1, sizeof(*r));
	if (!r) {
		rv = MER_ENOMEM;
		goto out_unmark;
	}
	r->built_ms = now;
	r->refs = 2; /* the cache's and the caller's */
	rv = build(b, gen, &r->fed, err, errlen);
	if (rv) {
		free(r);
		goto out_unmark;
	}
	r->gen = gen;
	pthread_mutex_lock(&b->fmu);
	/* A snapshot begun before an invalidation may predate the change:
	 * the caller may use it, the cache must not keep it. */
	if (gen == b->fed_gen) {
		old = b->fed_cache;
		b->fed_cache = r;
	} else {
		old = r;
	}
	if (builder)
		b->fed_building = 0;
	pthread_mutex_unlock(&b->fmu);
	mer_broker_fed_put(old);
	*out = r;
	return 0;
out_unmark:
	if (builder) {
		pthread_mutex_lock(&b->fmu);
		b->fed_building = 0;
		pthread_mutex_unlock(&b->fmu);
	}
	return rv;
}

/* ---- life cycle ------------------------------------------------------- */

static int load_fed_file(const char *path, json_t **out, char *err,
			 size_t errlen)
{
	struct mer_json_doc d;
	struct mer_fed *fed = NULL;
	int rv;

	*out = NULL;
	if (!path || !*path)
		return 0;
	rv = mer_json_doc_load(path, 64u << 20, 32, &d, err, errlen);
	if (rv)
		return rv;
	rv = mer_fed_from_json(d.root, &d, &fed, err, errlen);
	mer_fed_free(fed);
	if (rv == 0)
		*out = json_incref(d.root);
	mer_json_doc_free(&d);
	return rv;
}

int mer_broker_etcd_open(struct mer_broker *b, struct mer_etcd **out, char *err,
			 size_t errlen)
{
	/* endpoints as one comma-separated string */
	char eps[4096] = "";
	size_t off = 0;
	int rv;

	for (size_t i = 0; i < b->cfg.etcd_endpoints.n; i++) {
		int n = snprintf(eps + off, sizeof(eps) - off, "%s%s",
				 i ? "," : "", b->cfg.etcd_endpoints.v[i]);
		if (n < 0 || (size_t)n >= sizeof(eps) - off) {
			snprintf(err, errlen, "etcd.endpoints: too long");
			return MER_EINVAL;
		}
		off += (size_t)n;
	}
	struct mer_etcd_opts eo = {.endpoints = eps,
				   .request_timeout_ms =
				       (long)b->cfg.etcd_timeout_ms,
				   .ca_file = b->cfg.etcd_ca_file,
				   .cert_file = b->cfg.etcd_cert_file,
				   .key_file = b->cfg.etcd_key_file,
				   .pool_size = 32};
	rv = mer_etcd_open(&eo, out);
	if (rv)
		snprintf(err, errlen, "etcd.endpoints: %s", mer_strerror(rv));
	return rv;
}

int mer_broker_new(const char *cfg_path, struct mer_broker **out, char *err,
		   size_t errlen)
{
	struct mer_broker *b = calloc(1, sizeof(*b));
	enum mer_log_level lvl;
	int rv;

	*out = NULL;
	if (!b)
		return MER_ENOMEM;
	pthread_rwlock_init(&b->lock, NULL);
	{
		/* Writers first: a step-down must not wait behind a
		 * stream of REST writes. */
		pthread_rwlockattr_t ra;
		pthread_rwlockattr_init(&ra);
		pthread_rwlockattr_setkind_np(
		    &ra, PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
		pthread_rwlock_init(&b->role, &ra);
		pthread_rwlockattr_destroy(&ra);
	}
	pthread_mutex_init(&b->pmu, NULL);
	pthread_mutex_init(&b->fmu, NULL);
	pthread_mutex_init(&b->smu, NULL);
	pthread_cond_init(&b->pcv, NULL);
	b->cfg_path = strdup(cfg_path);
	if (!b->cfg_path) {
		rv = MER_ENOMEM;
		goto fail;
	}
	rv = mer_broker_cfg_load(cfg_path, &b->cfg, err, errlen);
	if (rv)
		goto fail;
	if (mer_log_level_parse(b->cfg.log_level, &lvl) == 0)
		mer_log_set_level(lvl);
	rv = mer_tenants_load(b->cfg.tenants_file, &b->tenants, err, errlen);
	if (rv)
		goto fail;
	rv = load_fed_file(b->cfg.federation_file, &b->fed_file, err, errlen);
	if (rv)
		goto fail;
	if (b->cfg.key_file && *b->cfg.key_file) {
		struct mer_keypair kp;
		int created = 0;
		rv = mer_keypair_load_or_create(b->cfg.key_file, &kp, &created,
						err, errlen);
		if (rv)
			goto fail;
		mer_key_fingerprint(kp.pk, b->key_fp);
		mer_keypair_wipe(&kp);
		b->have_key = 1;
		if (created)
			mer_info("broker key created", "file=%s fingerprint=%s",
				 b->cfg.key_file, b->key_fp);
	}
	if ((rv = mer_broker_etcd_open(b, &b->etcd, err, errlen)))
		goto fail;
	/* No writes until elected (leader.c sets the fence). */
	mer_etcd_guard_block(b->etcd);
	if ((rv = mer_metrics_new(&b->metrics)))
		goto fail;
	struct mer_store_opts so = {
	    .etcd = b->etcd,
	    .prefix = b->cfg.etcd_prefix,
	    .batch_max = (unsigned)b->cfg.batch_max,
	    .linger_ms = (unsigned)b->cfg.batch_linger_ms,
	    .committers = 2,
	    .max_txn_ops = (unsigned)b->cfg.etcd_max_txn_ops,
	    .idem_keep_s = b->cfg.idem_keep_ms / 1000,
	    .on_stored = on_stored,
	    .observe = observe_etcd,
	    .arg = b};
	if ((rv = mer_store_open(&so, &b->store)))
		goto fail;
	if ((rv =
		 mer_membership_open(b->etcd, b->cfg.etcd_prefix, &b->members)))
		goto fail;
	*out = b;
	return 0;
fail:
	if (rv == MER_ENOMEM && err && !err[0])
		snprintf(err, errlen, "out of memory");
	mer_broker_free(b);
	return rv;
}

int mer_broker_start(struct mer_broker *b, char *err, size_t errlen)
{
	int rv = mer_broker_policy_load(b, err, errlen);

	if (rv)
		return rv;
	/* The REST server first (followers serve reads and redirects), then
	 * the campaign; the leader's work (link, placer, dispatch) starts
	 * when it is elected (leader.c). */
	struct mer_http_config hc = {
	    .url = b->cfg.http_listen,
	    .tls_cert_file = b->cfg.tls_cert_file,
	    .tls_key_file = b->cfg.tls_key_file,
	    .workers = (unsigned)b->cfg.http_workers,
	    .max_queue = (unsigned)b->cfg.http_max_queue,
	    .max_body = (size_t)b->cfg.http_max_body,
	    .body_timeout_ms = (unsigned)b->cfg.http_body_timeout_ms,
	    .header_timeout_ms = (unsigned)b->cfg.http_header_timeout_ms,
	    .idle_timeout_ms = (unsigned)b->cfg.http_idle_timeout_ms,
	    .max_connections = (unsigned)b->cfg.http_max_connections,
	    .max_header_bytes = (size_t)b->cfg.http_max_header_bytes,
	    .arg = b,
	    .observe = mer_metrics_http_observe,
	    .observe_arg = b->metrics};
	if ((rv = mer_http_server_new(&hc, &b->http, err, errlen)))
		return rv;
	if ((rv = mer_api_register(b))) {
		snprintf(err, errlen, "routes: %s", mer_strerror(rv));
		return rv;
	}
	if ((rv = mer_http_server_start(b->http))) {
		snprintf(err, errlen, "listen.http: cannot listen on %s: %s",
			 b->cfg.http_listen, mer_strerror(rv));
		return rv;
	}
	mer_info("broker listening", "url=%s port=%d", b->cfg.http_listen,
		 mer_http_server_port(b->http));
	if ((rv = mer_leader_start(b, err, errlen)))
		return rv;
	return 0;
}

int mer_broker_http_port(const struct mer_broker *b)
{
	return b->http ? mer_http_server_port(b->http) : 0;
}

int mer_broker_reload(struct mer_broker *b, char *err, size_t errlen)
{
	struct mer_tenants *t = NULL, *old;
	int rv = mer_tenants_load(b->cfg.tenants_file, &t, err, errlen);

	if (rv)
		return rv;
	if (b->cfg.policy_file && *b->cfg.policy_file) {
		struct mer_json_doc d;
		rv = mer_json_doc_load(b->cfg.policy_file, 1u << 20, 32, &d,
				       err, errlen);
		if (rv == 0) {
			struct mer_policy_ref *cur = mer_broker_policy_get(b);
			int same = cur && json_equal(cur->doc, d.root);
			mer_broker_policy_put(b, cur);
			if (!same)
				rv = mer_broker_policy_apply(
				    b, b->cfg.policy_file, d.text, d.len,
				    "sighup", NULL, err, errlen);
			mer_json_doc_free(&d);
			/* A follower: the leader applies policies. */
			if (rv == MER_ENOTLEADER) {
				mer_warn("policy file not applied: not the "
					 "leader",
					 "file=%s", b->cfg.policy_file);
				rv = 0;
			}
		}
		if (rv) {
			mer_tenants_free(t);
			return rv;
		}
	}
	pthread_rwlock_wrlock(&b->lock);
	old = b->tenants;
	b->tenants = t;
	pthread_rwlock_unlock(&b->lock);
	mer_tenants_free(old);
	mer_info("reloaded", "tenants=%zu", mer_tenants_count(t));
	return 0;
}

void mer_broker_stop(struct mer_broker *b)
{
	if (!b)
		return;
	if (b->http)
		mer_http_server_stop(b->http);
	mer_leader_stop(b);
	mer_placer_stop(b);
	mer_dispatch_stop(b);
}

void mer_broker_free(struct mer_broker *b)
{
	if (!b)
		return;
	mer_broker_stop(b);
	mer_http_server_free(b->http);
	mer_leader_free(b);
	mer_store_close(b->store);
	mer_membership_close(b->members);
	mer_etcd_close(b->etcd);
	mer_metrics_free(b->metrics);
	mer_tenants_free(b->tenants);
	if (b->policy)
		mer_broker_policy_put(b, b->policy);
	json_decref(b->fed_file);
	mer_broker_cfg_free(&b->cfg);
	free(b->cfg_path);
	free(b->queue);
	mer_placer_free_table(b);
	mer_dispatch_free_watch(b);
	pthread_rwlock_destroy(&b->lock);
	pthread_rwlock_destroy(&b->role);
	mer_broker_fed_put(b->fed_cache);
	mer_placer_snapshot_drop(b);
	pthread_mutex_destroy(&b->smu);
	pthread_mutex_destroy(&b->fmu);
	pthread_mutex_destroy(&b->pmu);
	pthread_cond_destroy(&b->pcv);
	free(b);
}
