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
/* Slots of the record cache (direct-mapped by id): a few MiB of recent
 * records, enough for every job a burst of submissions and its placement
 * round touch. */
#define CACHE_SLOTS 4096

/*
 * One write waiting for a committer: a new job (record + index, maybe an
 * idempotency record) or a guarded update of one (record + index, guarded
 * by job_rev, plus the caller's extra ops). Several go into one txn.
 */
struct item {
	struct item *next;
	char job_key[KEY_MAX];
	char idx_key[KEY_MAX];
	char idem_key[KEY_MAX]; /* "" for none */
	char *job_val, *idx_val, *idem_val;
	int64_t idem_rev;   /* mod_revision the idem record must still have */
	int64_t idem_lease; /* the finished record's (0: none) */
	int64_t job_rev;    /* updates: the mod_revision the record must have */
	int is_update;
	struct mer_store_ops *extra; /* updates: more ops in the same txn */
	size_t bytes, nops;
	json_t *rec; /* the record as written, for the cache */
	char id[MER_JOB_ID_SIZE];
	int done;
	int rv;
	int64_t revision; /* etcd's revision after the txn (the record's) */
	/* Its waiter sleeps on this, with the store's mu: a finished txn
	 * wakes its own items only (one shared condition woke every waiter
	 * for every txn, 64 wake-ups a txn at 64 clients). */
	pthread_cond_t cv;
};

struct mer_store_ops {
	struct mer_etcd_op *ops;
	size_t n, cap, bytes;
};

/* A record this broker wrote or read, and the mod_revision it had. */
struct cache_slot {
	char id[MER_JOB_ID_SIZE];
	json_t *rec;
	int64_t rev;
};

struct mer_store {
	struct mer_etcd *etcd;
	char *prefix;
	unsigned batch_max, linger_ms, ncommit, max_ops;
	void (*on_stored)(void *, const char *);
	void (*observe)(void *, double);
	void *arg;
	pthread_mutex_t mu;
	pthread_cond_t work; /* queue not empty, or closing */
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
	/* Finished idempotency records expire with a lease granted per
	 * window of idem_window_s and living idem_keep_s + one window, so each
	 * is kept at least idem_keep_s (0: for ever). Under mu. */
	long long idem_keep_s, idem_window_s, idem_window_end;
	int64_t idem_lease;
	pthread_mutex_t cmu; /* the cache */
	struct cache_slot *cache;
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

/* ---- record cache ------------------------------------------------------ */

/*
 * The placer and dispatcher update a job soon after it was stored or last
 * changed; reading it back from etcd each time doubled etcd's work per job.
 * The cache keeps the last record this broker wrote or read per slot with
 * its mod_revision. It is only a first guess for guarded updates (a stale
 * entry fails the txn's compare and the update re-reads etcd) and for the
 * placer's look at a job; API reads always go to etcd.
 */
static struct cache_slot *slot_of(struct mer_store *s, const char *id)
{
	uint32_t h = 2166136261u; /* FNV-1a */

	for (const char *p = id; *p; p++)
		h = (h ^ (unsigned char)*p) * 16777619u;
	return &s->cache[h % CACHE_SLOTS];
}

static void cache_put(struct mer_store *s, const char *id, json_t *rec,
		      int64_t rev)
{
	json_t *old = NULL;

	if (!s->cache || !rec || rev <= 0)
		return;
	pthread_mutex_lock(&s->cmu);
	struct cache_slot *c = slot_of(s, id);
	/* Two updates of one job may finish out of order: keep the newer. */
	if (strcmp(c->id, id) != 0 || c->rev < rev) {
		old = c->rec;
		snprintf(c->id, sizeof(c->id), "%s", id);
		c->rec = json_incref(rec);
		c->rev = rev;
	}
	pthread_mutex_unlock(&s->cmu);
	json_decref(old);
}

static void cache_drop(struct mer_store *s, const char *id)
{
	json_t *old = NULL;

	if (!s->cache)
		return;
	pthread_mutex_lock(&s->cmu);
	struct cache_slot *c = slot_of(s, id);
	if (strcmp(c->id, id) == 0) {
		old = c->rec;
		c->rec = NULL;
		c->id[0] = 0;
		c->rev = 0;
	}
	pthread_mutex_unlock(&s->cmu);
	json_decref(old);
}

/* The cached record of id (new reference) or NULL. Records in the cache
 * are never changed in place: callers copy before they mutate. */
static json_t *cache_get(struct mer_store *s, const char *id, int64_t *rev)
{
	json_t *rec = NULL;

	if (!s->cache)
		return NULL;
	pthread_mutex_lock(&s->cmu);
	struct cache_slot *c = slot_of(s, id);
	if (c->rec && strcmp(c->id, id) == 0) {
		rec = json_incref(c->rec);
		*rev = c->rev;
	}
	pthread_mutex_unlock(&s->cmu);
	return rec;
}

/* ---- group commit ------------------------------------------------------ */

static void finish(struct mer_store *s, struct item **items, size_t n, int rv,
		   int64_t revision)
{
	size_t jobs = 0;

	for (size_t i = 0; i < n; i++) {
		if (rv == 0)
			cache_put(s, items[i]->id, items[i]->rec, revision);
		else if (items[i]->is_update)
			cache_drop(s, items[i]->id);
		jobs += !items[i]->is_update;
	}
	/* Before the waiters wake: once done is set, an item's submitter may
	 * free it. */
	if (rv == 0 && s->on_stored)
		for (size_t i = 0; i < n; i++)
			if (!items[i]->is_update)
				s->on_stored(s->arg, items[i]->id);
	pthread_mutex_lock(&s->mu);
	if (rv == 0) {
		s->stats.txns++;
		s->stats.jobs += jobs;
	} else if (rv != MER_ECOMPARE) {
		s->stats.etcd_errors++;
	}
	/* Under mu: a woken waiter returns (and frees its item) only after
	 * it gets mu back, so no item is touched after the unlock. */
	for (size_t i = 0; i < n; i++) {
		items[i]->rv = rv;
		items[i]->revision = revision;
		items[i]->done = 1;
		pthread_cond_signal(&items[i]->cv);
	}
	pthread_mutex_unlock(&s->mu);
}

static struct mer_etcd_op put_op(const char *key, const char *val)
{
	return (struct mer_etcd_op){.type = MER_ETCD_OP_PUT,
				    .key = key,
				    .key_len = strlen(key),
				    .value = val,
				    .value_len = strlen(val)};
}

static struct mer_etcd_cmp rev_cmp(const char *key, int64_t rev)
{
	return (struct mer_etcd_cmp){.key = key,
				     .key_len = strlen(key),
				     .target = MER_ETCD_CMP_MOD_REVISION,
				     .result = MER_ETCD_CMP_EQUAL,
				     .number = rev};
}

/* Writes items in one txn: 0 with *revision, MER_ECOMPARE (an
 * idempotency record or an updated job changed meanwhile), or etcd's
 * error. */
static int commit(struct mer_store *s, struct item **items, size_t n,
		  int64_t *revision)
{
	size_t max_ops = 0;
	for (size_t i = 0; i < n; i++)
		max_ops += items[i]->nops;
	struct mer_etcd_op *ops = calloc(max_ops, sizeof(*ops));
	struct mer_etcd_cmp *cmps = calloc(2 * n + 1, sizeof(*cmps));
	struct mer_etcd_txn_result r = {0};
	struct mer_etcd_status st;
	size_t nops = 0, ncmp = 0;
	int rv;

	*revision = 0;
	if (!ops || !cmps) {
		rv = MER_ENOMEM;
		goto out;
	}
	for (size_t i = 0; i < n; i++) {
		struct item *it = items[i];

		ops[nops++] = put_op(it->job_key, it->job_val);
		if (it->idx_val)
			ops[nops++] = put_op(it->idx_key, it->idx_val);
		if (it->is_update)
			cmps[ncmp++] = rev_cmp(it->job_key, it->job_rev);
		if (it->idem_key[0]) {
			ops[nops++] = put_op(it->idem_key, it->idem_val);
			ops[nops - 1].lease = it->idem_lease;
			cmps[ncmp++] = rev_cmp(it->idem_key, it->idem_rev);
		}
		for (size_t k = 0; it->extra && k < it->extra->n; k++)
			ops[nops++] = it->extra->ops[k];
	}
	double t0 = mono();
	rv = mer_etcd_txn(s->etcd, cmps, ncmp, ops, nops, NULL, 0, &r, &st);
	if (s->observe)
		s->observe(s->arg, mono() - t0);
	if (rv == 0 && !r.succeeded)
		rv = MER_ECOMPARE;
	if (rv == 0)
		*revision = r.revision;
	if (rv && rv != MER_ECOMPARE)
		mer_warn("job batch not stored",
			 "jobs=%zu ops=%zu err=%s "
			 "detail=%s",
			 n, nops, mer_errname(rv), st.message);
out:
	mer_etcd_txn_result_clear(&r);
	free(ops);
	free(cmps);
	return rv;
}

/* Whether it updates a record already in batch: etcd refuses a txn that
 * puts one key twice, so such an item waits for the next txn. */
static int key_in(struct item *const *batch, size_t n, const struct item *it)
{
	if (!it->is_update)
		return 0;
	for (size_t i = 0; i < n; i++)
		if (strcmp(batch[i]->job_key, it->job_key) == 0)
			return 1;
	return 0;
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
		/* As many as fit etcd's limits: --max-txn-ops and the
		 * request size. The first always goes (it was checked to fit
		 * on its own when queued). */
		size_t n = 0, bytes = 0, nops = 0;
		while (s->head && n < s->batch_max &&
		       (n == 0 || (bytes + s->head->bytes <= BATCH_MAX_BYTES &&
				   nops + s->head->nops <= s->max_ops &&
				   !key_in(batch, n, s->head)))) {
			struct item *it = s->head;
			s->head = it->next;
			if (!s->head)
				s->tail = &s->head;
			s->queued--;
			bytes += it->bytes;
			nops += it->nops;
			batch[n++] = it;
		}
		pthread_mutex_unlock(&s->mu);

		int64_t revision = 0;
		int rv = commit(s, batch, n, &revision);
		if (rv == MER_ECOMPARE && n > 1) {
			/* One stale idempotency record or job must not sink
			 * the others: write them one by one. */
			for (size_t i = 0; i < n; i++) {
				int r1 = commit(s, &batch[i], 1, &revision);
				finish(s, &batch[i], 1, r1, revision);
			}
		} else {
			finish(s, batch, n, rv, revision);
		}
		pthread_mutex_lock(&s->mu);
	}
	pthread_mutex_unlock(&s->mu);
	free(batch);
	return NULL;
}

/* Queues it for a committer and waits for its txn: the item's rv. */
static int enqueue_wait(struct mer_store *s, struct item *it)
{
	it->bytes = strlen(it->job_val) +
		    (it->idx_val ? strlen(it->idx_val) : 0) +
		    (it->idem_val ? strlen(it->idem_val) : 0) + 3 * KEY_MAX +
		    (it->extra ? it->extra->bytes : 0);
	it->nops = 1 + (it->idx_val != NULL) + (it->idem_key[0] != 0) +
		   (it->extra ? it->extra->n : 0);
	if (it->nops > s->max_ops || it->bytes > BATCH_MAX_BYTES)
		return MER_ETOOBIG;
	pthread_cond_init(&it->cv, NULL);
	pthread_mutex_lock(&s->mu);
	if (s->closing) {
		pthread_mutex_unlock(&s->mu);
		pthread_cond_destroy(&it->cv);
		return MER_ECLOSED;
	}
	*s->tail = it;
	s->tail = &it->next;
	s->queued++;
	pthread_cond_signal(&s->work);
	while (!it->done)
		pthread_cond_wait(&it->cv, &s->mu);
	pthread_mutex_unlock(&s->mu);
	pthread_cond_destroy(&it->cv);
	return it->rv;
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
	s->max_ops = o->max_txn_ops ? o->max_txn_ops : 128;
	s->idem_keep_s = o->idem_keep_s;
	/* 24 windows per retention (an hour for a day), at least 1 s. */
	s->idem_window_s = s->idem_keep_s / 24 > 1 ? s->idem_keep_s / 24 : 1;
	s->cache = calloc(CACHE_SLOTS, sizeof(*s->cache));
	pthread_mutex_init(&s->cmu, NULL);
	s->on_stored = o->on_stored;
	s->observe = o->observe;
	s->arg = o->arg;
	s->tail = &s->head;
	pthread_mutex_init(&s->mu, NULL);
	pthread_cond_init(&s->work, NULL);
	s->threads = calloc(s->ncommit, sizeof(*s->threads));
	if (!s->prefix || !s->threads || !s->cache) {
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
	for (struct item *it = s->head, *next; it; it = next) {
		next = it->next; /* it may be freed once its waiter runs */
		it->rv = MER_ECLOSED;
		it->done = 1;
		pthread_cond_signal(&it->cv);
	}
	s->head = NULL;
	pthread_mutex_unlock(&s->mu);
	mer_etcd_keeper_stop(s->keeper);
	if (s->lease)
		(void)mer_etcd_lease_revoke(s->etcd, s->lease, NULL);
	pthread_cond_destroy(&s->work);
	pthread_mutex_destroy(&s->mu);
	for (size_t i = 0; s->cache && i < CACHE_SLOTS; i++)
		json_decref(s->cache[i].rec);
	free(s->cache);
	pthread_mutex_destroy(&s->cmu);
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
 * The lease a finished idempotency record is written with: one per window,
 * never kept alive, so etcd deletes the window's records together once the
 * retention has passed (no sweeper, nothing to scan). 0 (kept for ever)
 * when retention is off or etcd would not grant one: an answer is never
 * dropped early.
 */
static int64_t idem_done_lease(struct mer_store *s)
{
	long long now = (long long)time(NULL);
	int64_t lease = 0, ttl = 0;

	if (s->idem_keep_s <= 0)
		return 0;
	pthread_mutex_lock(&s->mu);
	if (s->idem_lease && now < s->idem_window_end)
		lease = s->idem_lease;
	pthread_mutex_unlock(&s->mu);
	if (lease)
		return lease;
	/* Two threads may both grant at a window's start; the loser's lease
	 * expires unused. */
	if (mer_etcd_lease_grant(s->etcd, s->idem_keep_s + s->idem_window_s,
				 &lease, &ttl, NULL) != 0) {
		mer_warn("idempotency lease not granted", "keep_s=%lld",
			 s->idem_keep_s);
		return 0;
	}
	pthread_mutex_lock(&s->mu);
	s->idem_lease = lease;
	s->idem_window_end = now + s->idem_window_s;
	pthread_mutex_unlock(&s->mu);
	return lease;
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
		it->idem_lease = idem_done_lease(s);
		if (!it->idem_val) {
			rv = MER_ENOMEM;
			goto out_release;
		}
	}
	it->rec = (json_t *)record;
	rv = enqueue_wait(s, it);
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

int mer_store_get_cached(struct mer_store *s, const char *id, json_t **rec,
			 int64_t *mod_rev)
{
	int64_t rev = 0;

	*rec = NULL;
	if (!mer_job_id_valid(id))
		return MER_ENOTFOUND;
	if ((*rec = cache_get(s, id, &rev))) {
		if (mod_rev)
			*mod_rev = rev;
		return 0;
	}
	int rv = mer_store_get(s, id, rec, &rev);
	if (rv == 0) {
		cache_put(s, id, *rec, rev);
		if (mod_rev)
			*mod_rev = rev;
	}
	return rv;
}

int mer_store_ops_put(struct mer_store_ops *o, const char *key,
		      const char *value)
{
	return mer_store_ops_add(o, MER_ETCD_OP_PUT, key, value);
}

int mer_store_ops_add(struct mer_store_ops *o, int type, const char *key,
		      const char *value)
{
	if (o->n == o->cap) {
		size_t cap = o->cap ? 2 * o->cap : 8;
		struct mer_etcd_op *p = realloc(o->ops, cap * sizeof(*p));
		if (!p)
			return MER_ENOMEM;
		o->ops = p;
		o->cap = cap;
	}
	char *k = strdup(key), *v = value ? strdup(value) : NULL;
	if (!k || (value && !v)) {
		free(k);
		free(v);
		return MER_ENOMEM;
	}
	o->ops[o->n++] = (struct mer_etcd_op){.type = type,
					      .key = k,
					      .key_len = strlen(k),
					      .value = v,
					      .value_len = v ? strlen(v) : 0};
	o->bytes += strlen(k) + (v ? strlen(v) : 0);
	return 0;
}

static void ops_clear(struct mer_store_ops *o)
{
	for (size_t i = 0; i < o->n; i++) {
		free((char *)o->ops[i].key);
		free((char *)o->ops[i].value);
	}
	free(o->ops);
	*o = (struct mer_store_ops){0};
}

/* One try of a guarded update against (rec, mod): MER_ECOMPARE when the
 * record moved on, MER_ECANCELED when mutate wrote nothing. */
static int update_once(struct mer_store *s, const char *id, json_t *rec,
		       int64_t mod, mer_store_mutate_fn mutate,
		       mer_store_extra_fn extra, void *arg, json_t **after)
{
	struct item it = {.is_update = 1, .job_rev = mod};
	struct mer_store_ops ops = {0};
	json_t *copy = json_deep_copy(rec), *sum = NULL, *osum = NULL;
	int rv;

	if (!copy)
		return MER_ENOMEM;
	rv = mutate(arg, copy);
	if (rv == MER_ECANCELED) {
		if (after)
			*after = json_incref(rec);
		goto out;
	}
	if (rv == 0)
		rv = rec_keys(s, copy, it.job_key, it.idx_key);
	if (rv == 0 && extra)
		rv = extra(arg, copy, &ops);
	if (rv)
		goto out;
	snprintf(it.id, sizeof(it.id), "%s", id);
	sum = summary_of(copy);
	osum = summary_of(rec);
	it.job_val = mer_json_dumps(copy);
	if (!sum || !osum || !it.job_val) {
		rv = MER_ENOMEM;
		goto out;
	}
	/* The index entry changes only with its fields (the state, mostly):
	 * most updates leave it as it is. */
	if (!json_equal(sum, osum) && !(it.idx_val = mer_json_dumps(sum))) {
		rv = MER_ENOMEM;
		goto out;
	}
	it.extra = ops.n ? &ops : NULL;
	it.rec = copy;
	rv = enqueue_wait(s, &it);
	if (rv == 0 && after)
		*after = json_incref(copy);
out:
	free(it.job_val);
	free(it.idx_val);
	ops_clear(&ops);
	json_decref(sum);
	json_decref(osum);
	json_decref(copy);
	return rv;
}

int mer_store_update_ops(struct mer_store *s, const char *id,
			 mer_store_mutate_fn mutate, mer_store_extra_fn extra,
			 void *arg, json_t **after)
{
	json_t *rec;
	int64_t mod = 0;

	if (after)
		*after = NULL;
	if (!mer_job_id_valid(id))
		return MER_ENOTFOUND;
	/* First against the cached copy (no read), then against etcd's. */
	rec = cache_get(s, id, &mod);
	for (int tries = 0; tries < UPDATE_RETRIES; tries++) {
		int cached = rec != NULL;
		int rv = rec ? 0 : mer_store_get(s, id, &rec, &mod);

		if (rv)
			return rv;
		rv = update_once(s, id, rec, mod, mutate, extra, arg, after);
		json_decref(rec);
		rec = NULL;
		if (rv == MER_ECANCELED)
			return 0;
		if (rv != MER_ECOMPARE)
			return rv;
		/* Lost a race (or the cache was behind): read again. */
		if (cached)
			continue;
		pthread_mutex_lock(&s->mu);
		s->stats.conflicts++;
		pthread_mutex_unlock(&s->mu);
	}
	return MER_EBUSY;
}

int mer_store_update(struct mer_store *s, const char *id,
		     mer_store_mutate_fn mutate, void *arg, json_t **after)
{
	return mer_store_update_ops(s, id, mutate, NULL, arg, after);
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

int mer_store_scan_prefix(struct mer_store *s, const char *what,
			  void (*fn)(void *arg, const char *rest,
				     const json_t *v),
			  void *arg)
{
	char prefix[KEY_MAX], after[KEY_MAX], rest[KEY_MAX];
	size_t plen = mer_store_key(s, prefix, sizeof(prefix), "%s", what);
	size_t alen = 0;
	int rv;

	if (!plen)
		return MER_ETOOBIG;
	for (;;) {
		struct mer_etcd_range r = {0};
		rv = mer_etcd_range_prefix(s->etcd, prefix, plen,
					   alen ? after : NULL, alen, 500, 0, 0,
					   &r, NULL);
		if (rv)
			return rv;
		for (size_t i = 0; i < r.n; i++) {
			json_t *v;
			if (r.kvs[i].key_len >= KEY_MAX)
				continue;
			memcpy(rest, r.kvs[i].key + plen,
			       r.kvs[i].key_len - plen);
			rest[r.kvs[i].key_len - plen] = 0;
			v = json_loadb(r.kvs[i].value, r.kvs[i].value_len, 0,
				       NULL);
			if (v)
				fn(arg, rest, v);
			json_decref(v);
			memcpy(after, r.kvs[i].key, r.kvs[i].key_len);
			alen = r.kvs[i].key_len;
		}
		int more = r.more && r.n > 0;
		mer_etcd_range_clear(&r);
		if (!more)
			return 0;
	}
}

struct scan_jobs {
	void (*fn)(void *arg, const json_t *rec);
	void *arg;
};

static void scan_job(void *arg, const char *rest, const json_t *v)
{
	struct scan_jobs *sj = arg;

	(void)rest;
	sj->fn(sj->arg, v);
}

int mer_store_scan(struct mer_store *s,
		   void (*fn)(void *arg, const json_t *rec), void *arg)
{
	struct scan_jobs sj = {fn, arg};

	return mer_store_scan_prefix(s, "jobs/", scan_job, &sj);
}

void mer_store_get_stats(struct mer_store *s, struct mer_store_stats *out)
{
	pthread_mutex_lock(&s->mu);
	*out = s->stats;
	pthread_mutex_unlock(&s->mu);
}
