/*
 * Job records in etcd with group commit, listing, idempotency keys and
 * revision-guarded updates (docs/STATE.md). Knows the shape of a record only
 * as far as the index needs (id, tenant, name, state, priority,
 * created_at); what the states mean is the placer's and the API's business.
 */
#include "broker/store.h"

#include <ctype.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <sodium.h>

#include "common/err.h"
#include "common/json.h"
#include "common/log.h"

#define KEY_MAX 320
/* Keep a batch well under etcd's --max-request-bytes (1.5 MiB default);
 * values travel base64-encoded (4/3). */
#define BATCH_MAX_BYTES (900u * 1024u)
#define UPDATE_RETRIES 32
#define LIST_MAX_PAGES 64

struct item {
	struct item *next;
	char job_key[KEY_MAX];
	char idx_key[KEY_MAX];
	char idem_key[KEY_MAX]; /* "" for none */
	char *job_val, *idx_val, *idem_val;
	int64_t idem_rev; /* mod_revision the idem record must still have */
	size_t bytes;
	char id[MER_JOB_ID_SIZE];
	int done;
	int rv;
};

struct mer_store {
	struct mer_etcd *etcd;
	char *prefix;
	unsigned batch_max, linger_ms, ncommit;
	void (*on_stored)(void *, const char *);
	void (*observe)(void *, double);
	void *arg;
	pthread_mutex_t mu;
	pthread_cond_t work; /* queue not empty, or closing */
	pthread_cond_t done; /* some item finished */
	struct item *head, **tail;
	size_t queued;
	int closing;
	pthread_t *threads;
	unsigned nthreads;
	/* Reservations of idempotency keys live on this broker's lease, so
	 * a broker that dies mid-request does not block retries for long. */
	int64_t lease;
	struct mer_etcd_keeper *keeper;
	struct mer_store_stats stats;
};

static double mono(void);

size_t mer_store_key(const struct mer_store *s, char *out, size_t n,
		     const char *fmt, ...)
{
	va_list ap;
	int a = snprintf(out, n, "%s/", s->prefix), b;

	if (a < 0 || (size_t)a >= n)
		return 0;
	va_start(ap, fmt);
	b = vsnprintf(out + a, n - (size_t)a, fmt, ap);
	va_end(ap);
	if (b < 0 || (size_t)(a + b) >= n)
		return 0;
	return (size_t)(a + b);
}

void mer_store_new_id(char out[MER_JOB_ID_SIZE])
{
	struct timespec ts;
	unsigned long long ms;

	clock_gettime(CLOCK_REALTIME, &ts);
	ms = (unsigned long long)ts.tv_sec * 1000ull +
	     (unsigned long long)(ts.tv_nsec / 1000000);
	snprintf(out, MER_JOB_ID_SIZE, "j%011llx%08x", ms & 0xfffffffffffull,
		 (unsigned)randombytes_random());
}

int mer_job_id_valid(const char *id)
{
	if (!id || strlen(id) != MER_JOB_ID_LEN || id[0] != 'j')
		return 0;
	for (size_t i = 1; i < MER_JOB_ID_LEN; i++)
		if (!isxdigit((unsigned char)id[i]) ||
		    isupper((unsigned char)id[i]))
			return 0;
	return 1;
}

static json_t *summary_of(const json_t *rec)
{
	return json_pack("{s:O?, s:O?, s:O?, s:O?, s:O?, s:O?}", "id",
			 json_object_get(rec, "id"), "tenant",
			 json_object_get(rec, "tenant"), "name",
			 json_object_get(rec, "name"), "state",
			 json_object_get(rec, "state"), "priority",
			 json_object_get(rec, "priority"), "created_at",
			 json_object_get(rec, "created_at"));
}

static int rec_keys(struct mer_store *s, const json_t *rec, char *job_key,
		    char *idx_key)
{
	const char *id = json_string_value(json_object_get(rec, "id"));
	const char *tenant = json_string_value(json_object_get(rec, "tenant"));

	if (!id || !tenant)
		return MER_EINVAL;
	if (!mer_store_key(s, job_key, KEY_MAX, "jobs/%s", id) ||
	    !mer_store_key(s, idx_key, KEY_MAX, "job-index/%s/%s", tenant, id))
		return MER_ETOOBIG;
	return 0;
}

/* ---- group commit ------------------------------------------------------ */

static void finish(struct mer_store *s, struct item **items, size_t n, int rv)
{
	/* Before the waiters wake: once done is set, an item's submitter may
	 * free it. */
	if (rv == 0 && s->on_stored)
		for (size_t i = 0; i < n; i++)
			s->on_stored(s->arg, items[i]->id);
	pthread_mutex_lock(&s->mu);
	for (size_t i = 0; i < n; i++) {
		items[i]->rv = rv;
		items[i]->done = 1;
	}
	if (rv == 0) {
		s->stats.txns++;
		s->stats.jobs += n;
	} else {
		s->stats.etcd_errors++;
	}
	pthread_cond_broadcast(&s->done);
	pthread_mutex_unlock(&s->mu);
}

/* Writes items in one txn: 0, MER_ECOMPARE (an idempotency record changed
 * meanwhile), or etcd's error. */
static int commit(struct mer_store *s, struct item **items, size_t n)
{
	struct mer_etcd_op *ops = calloc(3 * n, sizeof(*ops));
	struct mer_etcd_cmp *cmps = calloc(n + 1, sizeof(*cmps));
	struct mer_etcd_txn_result r = {0};
	struct mer_etcd_status st;
	size_t nops = 0, ncmp = 0;
	int rv;

	if (!ops || !cmps) {
		rv = MER_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		struct item *it = items[i];

		ops[nops++] =
		    (struct mer_etcd_op){.type = MER_ETCD_OP_PUT,
					 .key = it->job_key,
					 .key_len = strlen(it->job_key),
					 .value = it->job_val,
					 .value_len = strlen(it->job_val)};
		ops[nops++] =
		    (struct mer_etcd_op){.type = MER_ETCD_OP_PUT,
					 .key = it->idx_key,
					 .key_len = strlen(it->idx_key),
					 .value = it->idx_val,
					 .value_len = strlen(it->idx_val)};
		if (it->idem_key[0]) {
			ops[nops++] = (struct mer_etcd_op){
			    .type = MER_ETCD_OP_PUT,
			    .key = it->idem_key,
			    .key_len = strlen(it->idem_key),
			    .value = it->idem_val,
			    .value_len = strlen(it->idem_val)};
			cmps[ncmp++] = (struct mer_etcd_cmp){
			    .key = it->idem_key,
			    .key_len = strlen(it->idem_key),
			    .target = MER_ETCD_CMP_MOD_REVISION,
			    .result = MER_ETCD_CMP_EQUAL,
			    .number = it->idem_rev};
		}
	}
	double t0 = mono();
	rv = mer_etcd_txn(s->etcd, cmps, ncmp, ops, nops, NULL, 0, &r, &st);
	if (s->observe)
		s->observe(s->arg, mono() - t0);
	if (rv == 0 && !r.succeeded)
		rv = MER_ECOMPARE;
	if (rv && rv != MER_ECOMPARE)
		mer_warn("job batch not stored", "jobs=%zu err=%s detail=%s", n,
			 mer_errname(rv), st.message);
out:
	mer_etcd_txn_result_clear(&r);
	free(ops);
	free(cmps);
	return rv;
}

static void *committer(void *arg)
{
	struct mer_store *s = arg;
	struct item **batch = calloc(s->batch_max, sizeof(*batch));

	if (!batch)
		return NULL;
	pthread_mutex_lock(&s->mu);
	for (;;) {
		while (!s->head && !s->closing)
			pthread_cond_wait(&s->work, &s->mu);
		if (!s->head && s->closing)
			break;
		if (s->linger_ms && s->queued < s->batch_max && !s->closing) {
			struct timespec ts;
			clock_gettime(CLOCK_REALTIME, &ts);
			ts.tv_nsec += (long)s->linger_ms * 1000000L;
			ts.tv_sec += ts.tv_nsec / 1000000000L;
			ts.tv_nsec %= 1000000000L;
			pthread_cond_timedwait(&s->work, &s->mu, &ts);
			if (!s->head)
				continue;
		}
		size_t n = 0, bytes = 0;
		while (s->head && n < s->batch_max &&
		       (n == 0 || bytes + s->head->bytes <= BATCH_MAX_BYTES)) {
			struct item *it = s->head;
			s->head = it->next;
			if (!s->head)
				s->tail = &s->head;
			s->queued--;
			bytes += it->bytes;
			batch[n++] = it;
		}
		pthread_mutex_unlock(&s->mu);

		int rv = commit(s, batch, n);
		if (rv == MER_ECOMPARE && n > 1) {
			/* One stale idempotency record must not sink the
			 * others: write them one by one. */
			for (size_t i = 0; i < n; i++) {
				int r1 = commit(s, &batch[i], 1);
				finish(s, &batch[i], 1, r1);
			}
		} else {
			finish(s, batch, n, rv);
		}
		pthread_mutex_lock(&s->mu);
	}
	pthread_mutex_unlock(&s->mu);
	free(batch);
	return NULL;
}

int mer_store_open(const struct mer_store_opts *o, struct mer_store **out)
{
	struct mer_store *s = calloc(1, sizeof(*s));

	*out = NULL;
	if (!s)
		return MER_ENOMEM;
	s->etcd = o->etcd;
	s->prefix = strdup(o->prefix ? o->prefix : "/meridian");
	s->batch_max = o->batch_max ? o->batch_max : 128;
	s->linger_ms = o->linger_ms;
	s->ncommit = o->committers ? o->committers : 2;
	s->on_stored = o->on_stored;
	s->observe = o->observe;
	s->arg = o->arg;
	s->tail = &s->head;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->work, NULL);
	pthread_cond_init(&s->done, NULL);
	s->threads = calloc(s->ncommit, sizeof(*s->threads));
	if (!s->prefix || !s->threads) {
		mer_store_close(s);
		return MER_ENOMEM;
	}
	int64_t ttl = 0;
	if (mer_etcd_lease_grant(s->etcd, MER_IDEM_LEASE_S, &s->lease, &ttl,
				 NULL) == 0 &&
	    mer_etcd_keeper_start(s->etcd, s->lease, ttl, NULL, NULL,
				  &s->keeper) != 0)
		s->lease = 0;
	for (unsigned i = 0; i < s->ncommit; i++) {
		if (pthread_create(&s->threads[i], NULL, committer, s) != 0) {
			mer_store_close(s);
			return MER_ENOMEM;
		}
		s->nthreads++;
	}
	*out = s;
	return 0;
}

void mer_store_close(struct mer_store *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&s->mu);
	s->closing = 1;
	pthread_cond_broadcast(&s->work);
	pthread_mutex_unlock(&s->mu);
	/* Committers drain the queue before they exit, so no waiter hangs. */
	for (unsigned i = 0; i < s->nthreads; i++)
		pthread_join(s->threads[i], NULL);
	pthread_mutex_lock(&s->mu);
	for (struct item *it = s->head; it; it = it->next) {
		it->rv = MER_ECLOSED;
		it->done = 1;
	}
	s->head = NULL;
	pthread_cond_broadcast(&s->done);
	pthread_mutex_unlock(&s->mu);
	mer_etcd_keeper_stop(s->keeper);
	if (s->lease)
		(void)mer_etcd_lease_revoke(s->etcd, s->lease, NULL);
	pthread_cond_destroy(&s->work);
	pthread_cond_destroy(&s->done);
	pthread_mutex_destroy(&s->mu);
	free(s->threads);
	free(s->prefix);
	free(s);
}

/* ---- idempotency ------------------------------------------------------- */

static double mono(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static long long now_s(void)
{
	return (long long)time(NULL);
}

/* The lease for reservations, or 0 when it was lost (then only the
 * MER_IDEM_STALE_S age frees an abandoned reservation). */
static int64_t lease_now(struct mer_store *s)
{
	return s->keeper && !mer_etcd_keeper_lost(s->keeper) ? s->lease : 0;
}

/*
 * Reserves an idempotency key: 0 with *rev (the record's mod_revision) when
 * this request may go ahead; 0 with res filled (replayed) when an identical
 * request finished before; MER_EINVAL / MER_EBUSY as in store.h.
 */
static int idem_reserve(struct mer_store *s, const char *key,
			const char hash[65], int64_t *rev,
			struct mer_submit_result *res)
{
	struct mer_etcd_status st;
	json_t *pending = json_pack("{s:s, s:s, s:I}", "state", "pending",
				    "body", hash, "at", (json_int_t)now_s());
	char *val = pending ? mer_json_dumps(pending) : NULL;
	int rv;

	json_decref(pending);
	if (!val)
		return MER_ENOMEM;
	for (int tries = 0; tries < 4; tries++) {
		struct mer_etcd_kv kv = {0};
		json_t *old;

		rv = mer_etcd_create(s->etcd, key, strlen(key), val,
				     strlen(val), lease_now(s), &st);
		if (rv == 0) {
			*rev = st.revision;
			goto out;
		}
		if (rv != MER_EEXIST)
			goto out;
		rv = mer_etcd_get(s->etcd, key, strlen(key), &kv, &st);
		if (rv == MER_ENOTFOUND)
			continue; /* deleted after a failed commit: retry */
		if (rv)
			goto out;
		old = json_loadb(kv.value, kv.value_len, 0, NULL);
		const char *ob =
		    json_string_value(json_object_get(old, "body"));
		const char *state =
		    json_string_value(json_object_get(old, "state"));
		json_int_t at = json_integer_value(json_object_get(old, "at"));
		if (!old || !ob || !state) {
			rv = MER_EPROTO;
		} else if (sodium_memcmp(ob, hash, 64) != 0) {
			rv = MER_EINVAL;
		} else if (strcmp(state, "done") == 0) {
			res->status = (int)json_integer_value(
			    json_object_get(old, "status"));
			res->response =
			    json_incref(json_object_get(old, "response"));
			res->replayed = 1;
			rv = 0;
		} else if (now_s() - at < MER_IDEM_STALE_S) {
			rv = MER_EBUSY;
		} else {
			/* The broker that reserved it died: take it over. */
			rv = mer_etcd_put_if_mod_revision(
			    s->etcd, key, strlen(key), val, strlen(val),
			    lease_now(s), kv.mod_revision, &st);
			if (rv == 0)
				*rev = st.revision;
			else if (rv == MER_ECOMPARE)
				rv = MER_EBUSY;
		}
		json_decref(old);
		mer_etcd_kv_clear(&kv);
		goto out;
	}
	rv = MER_EBUSY;
out:
	free(val);
	return rv;
}

int mer_store_submit(struct mer_store *s, const json_t *record,
		     const json_t *response, const char *idem_key,
		     const char body_hash[65], struct mer_submit_result *res)
{
	struct item *it = calloc(1, sizeof(*it));
	json_t *sum = NULL, *done = NULL;
	int rv;

	memset(res, 0, sizeof(*res));
	if (!it)
		return MER_ENOMEM;
	if ((rv = rec_keys(s, record, it->job_key, it->idx_key)))
		goto out;
	snprintf(it->id, sizeof(it->id), "%s",
		 json_string_value(json_object_get(record, "id")));
	sum = summary_of(record);
	it->job_val = mer_json_dumps(record);
	it->idx_val = sum ? mer_json_dumps(sum) : NULL;
	if (!it->job_val || !it->idx_val) {
		rv = MER_ENOMEM;
		goto out;
	}
	if (idem_key) {
		unsigned char h[32];
		char hx[65];
		crypto_hash_sha256(h, (const unsigned char *)idem_key,
				   strlen(idem_key));
		sodium_bin2hex(hx, sizeof(hx), h, sizeof(h));
		if (!mer_store_key(
			s, it->idem_key, KEY_MAX, "idem/%s/%s",
			json_string_value(json_object_get(record, "tenant")),
			hx)) {
			rv = MER_ETOOBIG;
			goto out;
		}
		rv = idem_reserve(s, it->idem_key, body_hash, &it->idem_rev,
				  res);
		if (rv || res->replayed)
			goto out;
		done = json_pack("{s:s, s:s, s:I, s:i, s:O, s:s}", "state",
				 "done", "body", body_hash, "at",
				 (json_int_t)now_s(), "status", 201, "response",
				 response, "job", it->id);
		it->idem_val = done ? mer_json_dumps(done) : NULL;
		if (!it->idem_val) {
			rv = MER_ENOMEM;
			goto out_release;
		}
	}
	it->bytes = strlen(it->job_val) + strlen(it->idx_val) +
		    (it->idem_val ? strlen(it->idem_val) : 0) + 3 * KEY_MAX;

	pthread_mutex_lock(&s->mu);
	if (s->closing) {
		pthread_mutex_unlock(&s->mu);
		rv = MER_ECLOSED;
		goto out_release;
	}
	*s->tail = it;
	s->tail = &it->next;
	s->queued++;
	pthread_cond_signal(&s->work);
	while (!it->done)
		pthread_cond_wait(&s->done, &s->mu);
	pthread_mutex_unlock(&s->mu);
	rv = it->rv;
	if (rv == 0) {
		res->status = 201;
		res->response = json_incref((json_t *)response);
		goto out;
	}
out_release:
	if (it->idem_key[0] && it->idem_rev)
		(void)mer_etcd_delete_if_mod_revision(s->etcd, it->idem_key,
						      strlen(it->idem_key),
						      it->idem_rev, NULL);
out:
	json_decref(sum);
	json_decref(done);
	free(it->job_val);
	free(it->idx_val);
	free(it->idem_val);
	free(it);
	return rv;
}

/* ---- reads and guarded updates ----------------------------------------- */

int mer_store_get(struct mer_store *s, const char *id, json_t **rec,
		  int64_t *mod_rev)
{
	char key[KEY_MAX];
	struct mer_etcd_kv kv = {0};
	int rv;

	*rec = NULL;
	if (!mer_job_id_valid(id))
		return MER_ENOTFOUND;
	mer_store_key(s, key, sizeof(key), "jobs/%s", id);
	rv = mer_etcd_get(s->etcd, key, strlen(key), &kv, NULL);
	if (rv)
		return rv;
	*rec = json_loadb(kv.value, kv.value_len, 0, NULL);
	if (mod_rev)
		*mod_rev = kv.mod_revision;
	mer_etcd_kv_clear(&kv);
	return *rec ? 0 : MER_EPROTO;
}

int mer_store_update(struct mer_store *s, const char *id,
		     mer_store_mutate_fn mutate, void *arg, json_t **after)
{
	if (after)
		*after = NULL;
	for (int tries = 0; tries < UPDATE_RETRIES; tries++) {
		json_t *rec = NULL, *copy = NULL, *sum = NULL;
		char job_key[KEY_MAX], idx_key[KEY_MAX];
		char *jv = NULL, *iv = NULL;
		int64_t mod = 0;
		struct mer_etcd_txn_result r = {0};
		int rv = mer_store_get(s, id, &rec, &mod);

		if (rv)
			return rv;
		copy = json_deep_copy(rec);
		if (!copy) {
			json_decref(rec);
			return MER_ENOMEM;
		}
		rv = mutate(arg, copy);
		if (rv == MER_ECANCELED) {
			if (after)
				*after = json_incref(rec);
			json_decref(rec);
			json_decref(copy);
			return 0;
		}
		if (rv == 0)
			rv = rec_keys(s, copy, job_key, idx_key);
		if (rv == 0) {
			sum = summary_of(copy);
			jv = mer_json_dumps(copy);
			iv = sum ? mer_json_dumps(sum) : NULL;
			if (!jv || !iv)
				rv = MER_ENOMEM;
		}
		if (rv == 0) {
			struct mer_etcd_cmp c = {.key = job_key,
						 .key_len = strlen(job_key),
						 .target =
						     MER_ETCD_CMP_MOD_REVISION,
						 .result = MER_ETCD_CMP_EQUAL,
						 .number = mod};
			struct mer_etcd_op ops[2] = {
			    {.type = MER_ETCD_OP_PUT,
			     .key = job_key,
			     .key_len = strlen(job_key),
			     .value = jv,
			     .value_len = strlen(jv)},
			    {.type = MER_ETCD_OP_PUT,
			     .key = idx_key,
			     .key_len = strlen(idx_key),
			     .value = iv,
			     .value_len = strlen(iv)}};
			double t0 = mono();
			rv = mer_etcd_txn(s->etcd, &c, 1, ops, 2, NULL, 0, &r,
					  NULL);
			if (s->observe)
				s->observe(s->arg, mono() - t0);
			if (rv == 0 && !r.succeeded)
				rv = MER_ECOMPARE;
			mer_etcd_txn_result_clear(&r);
		}
		free(jv);
		free(iv);
		json_decref(sum);
		json_decref(rec);
		if (rv == 0 && after)
			*after = json_incref(copy);
		json_decref(copy);
		if (rv != MER_ECOMPARE)
			return rv;
		pthread_mutex_lock(&s->mu);
		s->stats.conflicts++;
		pthread_mutex_unlock(&s->mu);
	}
	return MER_EBUSY;
}

static int cursor_parse(const char *c, char *tenant, size_t tn, char *id)
{
	const char *dot = strchr(c, '.');

	if (!dot || (size_t)(dot - c) >= tn || dot == c ||
	    !mer_job_id_valid(dot + 1))
		return MER_EINVAL;
	memcpy(tenant, c, (size_t)(dot - c));
	tenant[dot - c] = 0;
	for (const char *p = tenant; *p; p++)
		if (!(islower((unsigned char)*p) ||
		      isdigit((unsigned char)*p) || *p == '-' || *p == '_'))
			return MER_EINVAL;
	snprintf(id, MER_JOB_ID_SIZE, "%s", dot + 1);
	return 0;
}

static int matches(const json_t *sum, const struct mer_list_query *q)
{
	const char *st = json_string_value(json_object_get(sum, "state"));
	const char *nm = json_string_value(json_object_get(sum, "name"));

	if (q->state && (!st || strcmp(st, q->state) != 0))
		return 0;
	if (q->name && (!nm || strcmp(nm, q->name) != 0))
		return 0;
	return 1;
}

int mer_store_list(struct mer_store *s, const struct mer_list_query *q,
		   json_t **items, char next[MER_CURSOR_SIZE])
{
	char prefix[KEY_MAX], after[KEY_MAX];
	size_t plen, alen = 0;
	int64_t rev = 0;
	json_t *out = json_array();
	int rv = 0;

	next[0] = 0;
	*items = NULL;
	if (!out)
		return MER_ENOMEM;
	plen = q->tenant
		   ? mer_store_key(s, prefix, sizeof(prefix), "job-index/%s/",
				   q->tenant)
		   : mer_store_key(s, prefix, sizeof(prefix), "job-index/");
	if (!plen) {
		json_decref(out);
		return MER_EINVAL;
	}
	if (q->cursor && *q->cursor) {
		char t[64], id[MER_JOB_ID_SIZE];
		if (cursor_parse(q->cursor, t, sizeof(t), id) ||
		    (q->tenant && strcmp(t, q->tenant) != 0)) {
			json_decref(out);
			return MER_EINVAL;
		}
		alen = mer_store_key(s, after, sizeof(after), "job-index/%s/%s",
				     t, id);
	}
	for (int page = 0; page < LIST_MAX_PAGES; page++) {
		struct mer_etcd_range r = {0};
		int64_t want = (int64_t)(q->limit - json_array_size(out));

		if (want < 50)
			want = (q->state || q->name) ? 200 : want;
		rv = mer_etcd_range_prefix(s->etcd, prefix, plen,
					   alen ? after : NULL, alen, want, rev,
					   0, &r, NULL);
		if (rv)
			break;
		rev = r.revision;
		for (size_t i = 0; i < r.n; i++) {
			json_t *sum;
			if (r.kvs[i].key_len >= KEY_MAX)
				continue;
			sum = json_loadb(r.kvs[i].value, r.kvs[i].value_len, 0,
					 NULL);
			memcpy(after, r.kvs[i].key, r.kvs[i].key_len);
			after[r.kvs[i].key_len] = 0;
			alen = r.kvs[i].key_len;
			if (sum && matches(sum, q))
				json_array_append(out, sum);
			json_decref(sum);
			if (json_array_size(out) >= q->limit) {
				if (i + 1 < r.n || r.more)
					goto cursor;
				break;
			}
		}
		int more = r.more;
		mer_etcd_range_clear(&r);
		if (!more || json_array_size(out) >= q->limit)
			goto done;
		continue;
	cursor:
		mer_etcd_range_clear(&r);
		break;
	}
	if (rv == 0 && alen) {
		/* "<tenant>.<id>" from ".../job-index/<tenant>/<id>" */
		const char *id = strrchr(after, '/');
		const char *t = after + strlen(prefix);
		if (q->tenant)
			snprintf(next, MER_CURSOR_SIZE, "%s.%s", q->tenant,
				 id + 1);
		else
			snprintf(next, MER_CURSOR_SIZE, "%.*s.%s",
				 (int)(id - t), t, id + 1);
	}
done:
	if (rv) {
		json_decref(out);
		return rv;
	}
	*items = out;
	return 0;
}

int mer_store_scan(struct mer_store *s,
		   void (*fn)(void *arg, const json_t *rec), void *arg)
{
	char prefix[KEY_MAX], after[KEY_MAX];
	size_t plen = mer_store_key(s, prefix, sizeof(prefix), "jobs/");
	size_t alen = 0;
	int rv;

	for (;;) {
		struct mer_etcd_range r = {0};
		rv = mer_etcd_range_prefix(s->etcd, prefix, plen,
					   alen ? after : NULL, alen, 500, 0, 0,
					   &r, NULL);
		if (rv)
			return rv;
		for (size_t i = 0; i < r.n; i++) {
			json_t *rec;
			if (r.kvs[i].key_len >= KEY_MAX)
				continue;
			rec = json_loadb(r.kvs[i].value, r.kvs[i].value_len, 0,
					 NULL);
			if (rec)
				fn(arg, rec);
			json_decref(rec);
			memcpy(after, r.kvs[i].key, r.kvs[i].key_len);
			alen = r.kvs[i].key_len;
		}
		int more = r.more && r.n > 0;
		mer_etcd_range_clear(&r);
		if (!more)
			return 0;
	}
}

void mer_store_get_stats(struct mer_store *s, struct mer_store_stats *out)
{
	pthread_mutex_lock(&s->mu);
	*out = s->stats;
	pthread_mutex_unlock(&s->mu);
}
