/*
 * Integration tests for common/etcd against a real etcd started on free
 * loopback ports: kv, paging, txn compares, leases, watches (with resume after
 * a restart), fail-over, timeouts and concurrent use.
 */
#include "common/err.h"
#include "common/etcd.h"
#include "tests/harness.h"
#include "tests/lib/etcd_server.h"
#include "tests/lib/proc.h"

#include <arpa/inet.h>
#include <inttypes.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/socket.h>
#include <unistd.h>

/* ---- fixture: one shared etcd, per-case clients released after each case */

static struct t_etcd *shared;

static void shared_free(void)
{
	t_etcd_free(shared);
	shared = NULL;
}

/* The shared etcd, started on first use (NULL if it cannot start). */
static struct t_etcd *etcd(void)
{
	if (!shared) {
		if (t_etcd_start(&shared) != 0)
			return NULL;
		atexit(shared_free);
	}
	return shared;
}

#define FX_MAX 8
static struct mer_etcd *fx_clients[FX_MAX];
static struct mer_etcd_watch *fx_watches[FX_MAX];
static struct mer_etcd_keeper *fx_keepers[FX_MAX];
static struct t_etcd *fx_own; /* a case's private etcd */
static int fx_listen_fd = -1;
static char *fx_dir; /* a case's temp dir */

static void fx_teardown(void)
{
	for (int i = 0; i < FX_MAX; i++) {
		mer_etcd_watch_stop(fx_watches[i]);
		fx_watches[i] = NULL;
		mer_etcd_keeper_stop(fx_keepers[i]);
		fx_keepers[i] = NULL;
	}
	for (int i = 0; i < FX_MAX; i++) {
		mer_etcd_close(fx_clients[i]);
		fx_clients[i] = NULL;
	}
	t_etcd_free(fx_own);
	fx_own = NULL;
	if (fx_listen_fd >= 0)
		close(fx_listen_fd);
	fx_listen_fd = -1;
	t_rmtree(fx_dir);
	free(fx_dir);
	fx_dir = NULL;
}

#define FX_TRACK(arr, x)                                                       \
	do {                                                                   \
		for (int i_ = 0; i_ < FX_MAX; i_++)                            \
			if (!arr[i_]) {                                        \
				arr[i_] = (x);                                 \
				break;                                         \
			}                                                      \
	} while (0)

/* A client on endpoints with short timeouts; tracked for teardown. */
static struct mer_etcd *client_on(const char *endpoints, unsigned pool)
{
	struct mer_etcd_opts o = {
	    .endpoints = endpoints,
	    .connect_timeout_ms = 1000,
	    .request_timeout_ms = 3000,
	    .pool_size = pool,
	};
	struct mer_etcd *c = NULL;

	if (mer_etcd_open(&o, &c) != 0)
		return NULL;
	FX_TRACK(fx_clients, c);
	return c;
}

static struct mer_etcd *client(void)
{
	struct t_etcd *e = etcd();

	return e ? client_on(t_etcd_url(e), 0) : NULL;
}

#define CASE(name)                                                             \
	static void body_##name(void);                                         \
	static void case_##name(void)                                          \
	{                                                                      \
		body_##name();                                                 \
		fx_teardown();                                                 \
	}                                                                      \
	static void body_##name(void)

#define S(str) (str), strlen(str)

static int value_is(const struct mer_etcd_kv *kv, const char *s)
{
	return kv->value_len == strlen(s) &&
	       memcmp(kv->value, s, kv->value_len) == 0;
}

/* ---- watch event recorder ----------------------------------------------- */

struct rec_event {
	int kind;
	char key[64];
	char value[64];
	int64_t mod_revision;
	int64_t compact_revision;
};

struct recorder {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct rec_event ev[256];
	int n;
	int overflow;
};

/* Static: a watch may still call back after its case returned early, until
 * fx_teardown stops it. */
static struct recorder rec_a, rec_b;

static void rec_init(struct recorder *r)
{
	memset(r, 0, sizeof(*r));
	pthread_mutex_init(&r->mu, NULL);
	pthread_cond_init(&r->cv, NULL);
}

static void rec_fn(void *arg, const struct mer_etcd_event *ev)
{
	struct recorder *r = arg;

	pthread_mutex_lock(&r->mu);
	if (r->n < (int)(sizeof(r->ev) / sizeof(r->ev[0]))) {
		struct rec_event *e = &r->ev[r->n++];
		e->kind = ev->kind;
		snprintf(e->key, sizeof(e->key), "%.*s", (int)ev->kv.key_len,
			 ev->kv.key ? ev->kv.key : "");
		snprintf(e->value, sizeof(e->value), "%.*s",
			 (int)ev->kv.value_len,
			 ev->kv.value ? ev->kv.value : "");
		e->mod_revision = ev->kv.mod_revision;
		e->compact_revision = ev->compact_revision;
	} else {
		r->overflow = 1;
	}
	pthread_cond_broadcast(&r->cv);
	pthread_mutex_unlock(&r->mu);
}

/* Waits until at least n events arrived; returns how many there are. */
static int rec_wait(struct recorder *r, int n, int timeout_ms)
{
	long long deadline = t_now_ms() + timeout_ms;
	int got;

	for (;;) {
		pthread_mutex_lock(&r->mu);
		got = r->n;
		pthread_mutex_unlock(&r->mu);
		if (got >= n || t_now_ms() >= deadline)
			return got;
		t_sleep_ms(10);
	}
}

static int rec_count(struct recorder *r)
{
	int n;

	pthread_mutex_lock(&r->mu);
	n = r->n;
	pthread_mutex_unlock(&r->mu);
	return n;
}

static struct mer_etcd_watch *watch_prefix(struct mer_etcd *c,
					   const char *prefix, int64_t start,
					   long retry_ms, struct recorder *r)
{
	struct mer_etcd_watch_opts o = {
	    .key = prefix,
	    .key_len = strlen(prefix),
	    .prefix = 1,
	    .start_revision = start,
	    .retry_min_ms = retry_ms,
	    .retry_max_ms = retry_ms,
	};
	struct mer_etcd_watch *w = NULL;

	if (mer_etcd_watch_start(c, &o, rec_fn, r, &w) != 0)
		return NULL;
	FX_TRACK(fx_watches, w);
	return w;
}

/* Waits until the watch is established (so "from now" is defined). */
static int watch_ready(struct mer_etcd_watch *w, int timeout_ms)
{
	long long deadline = t_now_ms() + timeout_ms;

	while (mer_etcd_watch_connects(w) == 0) {
		if (t_now_ms() >= deadline)
			return 0;
		t_sleep_ms(10);
	}
	return 1;
}

/* ---- cases without a server --------------------------------------------- */

CASE(prefix_end_and_open_args)
{
	unsigned char out[8];
	size_t n = 0;

	mer_etcd_prefix_end("abc", 3, out, &n);
	T_EQ_INT(n, 3);
	T_EXPECT(memcmp(out, "abd", 3) == 0);
	mer_etcd_prefix_end("a\xff\xff", 3, out, &n);
	T_EQ_INT(n, 1);
	T_EQ_INT(out[0], 'b');
	mer_etcd_prefix_end("\xff", 1, out, &n);
	T_EQ_INT(n, 1);
	T_EQ_INT(out[0], 0);

	struct mer_etcd *c = NULL;
	const char *bad[] = {"",
			     ",",
			     "127.0.0.1:2379",
			     "http://a:1,",
			     "ftp://x",
			     "http://a:1,,http://b:2"};
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		struct mer_etcd_opts o = {.endpoints = bad[i]};
		int rv = mer_etcd_open(&o, &c);
		if (rv != MER_EINVAL)
			t_fail(__FILE__, __LINE__, "endpoints \"%s\": %d",
			       bad[i], rv);
		T_EXPECT(c == NULL);
	}
	struct mer_etcd_opts ok = {
	    .endpoints = " http://127.0.0.1:1/ , https://127.0.0.1:2"};
	T_OK(mer_etcd_open(&ok, &c));
	T_EQ_INT(mer_etcd_current_endpoint(c), 0);
	mer_etcd_close(c);
}

/* ---- kv ----------------------------------------------------------------- */

CASE(put_get)
{
	struct mer_etcd *c = client();
	struct mer_etcd_status st;
	struct mer_etcd_kv kv;

	T_ASSERT(c != NULL);
	T_OK(mer_etcd_put(c, S("pg/a"), S("hello"), 0, &st));
	int64_t rev1 = st.revision;
	T_EXPECT(rev1 > 0);
	T_EQ_STR(st.message, "");
	T_OK(mer_etcd_get(c, S("pg/a"), &kv, &st));
	T_EXPECT(value_is(&kv, "hello"));
	T_EQ_INT(kv.key_len, 4);
	T_EQ_STR(kv.key, "pg/a");
	T_EQ_INT(kv.version, 1);
	T_EQ_INT(kv.mod_revision, rev1);
	T_EQ_INT(kv.create_revision, rev1);
	mer_etcd_kv_clear(&kv);

	T_OK(mer_etcd_put(c, S("pg/a"), S("again"), 0, &st));
	T_EXPECT(st.revision > rev1);
	T_OK(mer_etcd_get(c, S("pg/a"), &kv, NULL));
	T_EXPECT(value_is(&kv, "again"));
	T_EQ_INT(kv.version, 2);
	T_EQ_INT(kv.create_revision, rev1);
	T_EQ_INT(kv.mod_revision, st.revision);
	mer_etcd_kv_clear(&kv);

	T_EQ_INT(mer_etcd_get(c, S("pg/missing"), &kv, &st), MER_ENOTFOUND);
	T_EXPECT(kv.key == NULL);
}

CASE(range_paging)
{
	struct mer_etcd *c = client();
	struct mer_etcd_range r;
	char key[32], last[32] = "";
	int seen = 0, pages = 0;
	int64_t snap = 0;

	T_ASSERT(c != NULL);
	for (int i = 0; i < 250; i++) {
		snprintf(key, sizeof(key), "page/%03d", i);
		T_OK(mer_etcd_put(c, S(key), S(key), 0, NULL));
	}
	/* A neighbour that a sloppy prefix end would include. */
	T_OK(mer_etcd_put(c, S("page0"), S("x"), 0, NULL));

	static const int want_n[] = {100, 100, 50};
	for (;;) {
		T_OK(mer_etcd_range_prefix(c, S("page/"), seen ? last : NULL,
					   strlen(last), 100, snap, 0, &r,
					   NULL));
		T_ASSERT(pages < 3);
		T_EQ_INT(r.n, want_n[pages]);
		T_EQ_INT(r.count, 250 - seen);
		T_EQ_INT(r.more, pages < 2);
		if (pages == 0) {
			snap = r.revision;
			/* Written after the first page: the pinned
			 * revision must hide it. */
			T_OK(mer_etcd_put(c, S("page/100x"), S("late"), 0,
					  NULL));
		} else {
			T_EQ_INT(r.revision, snap);
		}
		for (size_t i = 0; i < r.n; i++) {
			snprintf(key, sizeof(key), "page/%03d", seen);
			T_EQ_STR(r.kvs[i].key, key);
			T_EXPECT(value_is(&r.kvs[i], key));
			seen++;
		}
		pages++;
		int more = r.more;
		if (r.n)
			snprintf(last, sizeof(last), "%s", r.kvs[r.n - 1].key);
		mer_etcd_range_clear(&r);
		if (!more)
			break;
	}
	T_EQ_INT(pages, 3);
	T_EQ_INT(seen, 250);

	/* keys_only and latest revision: the late key shows up now. */
	T_OK(mer_etcd_range_prefix(c, S("page/"), NULL, 0, 0, 0, 1, &r, NULL));
	T_EQ_INT(r.n, 251);
	T_EQ_INT(r.more, 0);
	T_EQ_INT(r.kvs[0].value_len, 0);
	mer_etcd_range_clear(&r);
}

CASE(binary_values)
{
	struct mer_etcd *c = client();
	unsigned char val[256];
	const char key[] = "bin/\x00\xff\x01z";
	const size_t key_len = sizeof(key) - 1;
	struct mer_etcd_kv kv;
	struct mer_etcd_range r;

	T_ASSERT(c != NULL);
	for (int i = 0; i < 256; i++)
		val[i] = (unsigned char)(255 - i);
	T_OK(mer_etcd_put(c, key, key_len, val, sizeof(val), 0, NULL));
	T_OK(mer_etcd_get(c, key, key_len, &kv, NULL));
	T_EQ_INT(kv.key_len, key_len);
	T_EXPECT(memcmp(kv.key, key, key_len) == 0);
	T_EQ_INT(kv.value_len, sizeof(val));
	T_EXPECT(memcmp(kv.value, val, sizeof(val)) == 0);
	mer_etcd_kv_clear(&kv);

	/* Empty values are values, not absences. */
	T_OK(mer_etcd_put(c, S("bin/empty"), "", 0, 0, NULL));
	T_OK(mer_etcd_get(c, S("bin/empty"), &kv, NULL));
	T_EQ_INT(kv.value_len, 0);
	T_EQ_STR(kv.value, "");
	mer_etcd_kv_clear(&kv);

	/* Paging past a key with a NUL inside it. */
	T_OK(mer_etcd_range_prefix(c, S("bin/"), key, key_len, 0, 0, 0, &r,
				   NULL));
	T_EQ_INT(r.n, 1);
	if (r.n)
		T_EQ_STR(r.kvs[0].key, "bin/empty");
	mer_etcd_range_clear(&r);
}

CASE(delete_and_delete_prefix)
{
	struct mer_etcd *c = client();
	struct mer_etcd_kv kv;
	char key[32];
	int64_t n = -1;

	T_ASSERT(c != NULL);
	T_OK(mer_etcd_put(c, S("del/one"), S("1"), 0, NULL));
	T_OK(mer_etcd_delete(c, S("del/one"), &n, NULL));
	T_EQ_INT(n, 1);
	T_EQ_INT(mer_etcd_get(c, S("del/one"), &kv, NULL), MER_ENOTFOUND);
	T_OK(mer_etcd_delete(c, S("del/one"), &n, NULL));
	T_EQ_INT(n, 0);

	for (int i = 0; i < 5; i++) {
		snprintf(key, sizeof(key), "del/p/%d", i);
		T_OK(mer_etcd_put(c, S(key), S("v"), 0, NULL));
	}
	T_OK(mer_etcd_put(c, S("del/p0"), S("neighbour"), 0, NULL));
	T_OK(mer_etcd_put(c, S("del/p"), S("the prefix itself"), 0, NULL));
	T_OK(mer_etcd_delete_prefix(c, S("del/p/"), &n, NULL));
	T_EQ_INT(n, 5);
	T_OK(mer_etcd_get(c, S("del/p0"), &kv, NULL));
	mer_etcd_kv_clear(&kv);
	T_OK(mer_etcd_get(c, S("del/p"), &kv, NULL));
	mer_etcd_kv_clear(&kv);
	T_EQ_INT(mer_etcd_delete_prefix(c, "", 0, &n, NULL), MER_EINVAL);
}

/* ---- txn ---------------------------------------------------------------- */

struct cmp_case {
	enum mer_etcd_cmp_target target;
	enum mer_etcd_cmp_result result;
	/* operand: for numbers, base (0 none, 1 version, 2 create, 3 mod)
	 * plus delta; for VALUE, value */
	int base;
	int delta;
	const char *value;
	int want;
};

static const struct cmp_case cmp_cases[] = {
    {MER_ETCD_CMP_VALUE, MER_ETCD_CMP_EQUAL, 0, 0, "v2", 1},
    {MER_ETCD_CMP_VALUE, MER_ETCD_CMP_EQUAL, 0, 0, "v1", 0},
    {MER_ETCD_CMP_VALUE, MER_ETCD_CMP_NOT_EQUAL, 0, 0, "v1", 1},
    {MER_ETCD_CMP_VALUE, MER_ETCD_CMP_NOT_EQUAL, 0, 0, "v2", 0},
    {MER_ETCD_CMP_VALUE, MER_ETCD_CMP_LESS, 0, 0, "v3", 1},
    {MER_ETCD_CMP_VALUE, MER_ETCD_CMP_LESS, 0, 0, "v2", 0},
    {MER_ETCD_CMP_VALUE, MER_ETCD_CMP_GREATER, 0, 0, "v1", 1},
    {MER_ETCD_CMP_VALUE, MER_ETCD_CMP_GREATER, 0, 0, "v3", 0},
    {MER_ETCD_CMP_VERSION, MER_ETCD_CMP_EQUAL, 1, 0, NULL, 1},
    {MER_ETCD_CMP_VERSION, MER_ETCD_CMP_EQUAL, 1, -1, NULL, 0},
    {MER_ETCD_CMP_VERSION, MER_ETCD_CMP_NOT_EQUAL, 1, 1, NULL, 1},
    {MER_ETCD_CMP_VERSION, MER_ETCD_CMP_NOT_EQUAL, 1, 0, NULL, 0},
    {MER_ETCD_CMP_VERSION, MER_ETCD_CMP_LESS, 1, 1, NULL, 1},
    {MER_ETCD_CMP_VERSION, MER_ETCD_CMP_LESS, 1, 0, NULL, 0},
    {MER_ETCD_CMP_VERSION, MER_ETCD_CMP_GREATER, 1, -1, NULL, 1},
    {MER_ETCD_CMP_VERSION, MER_ETCD_CMP_GREATER, 1, 0, NULL, 0},
    {MER_ETCD_CMP_CREATE_REVISION, MER_ETCD_CMP_EQUAL, 2, 0, NULL, 1},
    {MER_ETCD_CMP_CREATE_REVISION, MER_ETCD_CMP_EQUAL, 2, 1, NULL, 0},
    {MER_ETCD_CMP_CREATE_REVISION, MER_ETCD_CMP_NOT_EQUAL, 2, 1, NULL, 1},
    {MER_ETCD_CMP_CREATE_REVISION, MER_ETCD_CMP_NOT_EQUAL, 2, 0, NULL, 0},
    {MER_ETCD_CMP_CREATE_REVISION, MER_ETCD_CMP_LESS, 2, 1, NULL, 1},
    {MER_ETCD_CMP_CREATE_REVISION, MER_ETCD_CMP_LESS, 2, 0, NULL, 0},
    {MER_ETCD_CMP_CREATE_REVISION, MER_ETCD_CMP_GREATER, 2, -1, NULL, 1},
    {MER_ETCD_CMP_CREATE_REVISION, MER_ETCD_CMP_GREATER, 2, 0, NULL, 0},
    {MER_ETCD_CMP_MOD_REVISION, MER_ETCD_CMP_EQUAL, 3, 0, NULL, 1},
    {MER_ETCD_CMP_MOD_REVISION, MER_ETCD_CMP_EQUAL, 3, -1, NULL, 0},
    {MER_ETCD_CMP_MOD_REVISION, MER_ETCD_CMP_NOT_EQUAL, 3, -1, NULL, 1},
    {MER_ETCD_CMP_MOD_REVISION, MER_ETCD_CMP_NOT_EQUAL, 3, 0, NULL, 0},
    {MER_ETCD_CMP_MOD_REVISION, MER_ETCD_CMP_LESS, 3, 1, NULL, 1},
    {MER_ETCD_CMP_MOD_REVISION, MER_ETCD_CMP_LESS, 3, 0, NULL, 0},
    {MER_ETCD_CMP_MOD_REVISION, MER_ETCD_CMP_GREATER, 3, -1, NULL, 1},
    {MER_ETCD_CMP_MOD_REVISION, MER_ETCD_CMP_GREATER, 3, 0, NULL, 0},
};

CASE(txn_compares_both_branches)
{
	struct mer_etcd *c = client();
	struct mer_etcd_status st;
	struct mer_etcd_kv kv;

	T_ASSERT(c != NULL);
	T_OK(mer_etcd_put(c, S("txn/k"), S("v1"), 0, &st));
	int64_t create = st.revision;
	T_OK(mer_etcd_put(c, S("txn/k"), S("v2"), 0, &st));
	int64_t mod = st.revision;

	for (size_t i = 0; i < sizeof(cmp_cases) / sizeof(cmp_cases[0]); i++) {
		const struct cmp_case *cc = &cmp_cases[i];
		int64_t bases[] = {0, 2, create, mod};
		struct mer_etcd_cmp cmp = {
		    .key = "txn/k",
		    .key_len = 5,
		    .target = cc->target,
		    .result = cc->result,
		    .number = bases[cc->base] + cc->delta,
		    .value = cc->value,
		    .value_len = cc->value ? strlen(cc->value) : 0,
		};
		/* Each branch writes its marker, reads the key and deletes
		 * its victim, so both branches' three op kinds are seen. */
		T_OK(mer_etcd_put(c, S("txn/victim-s"), S("x"), 0, NULL));
		T_OK(mer_etcd_put(c, S("txn/victim-f"), S("x"), 0, NULL));
		struct mer_etcd_op succ[] = {
		    {.type = MER_ETCD_OP_PUT,
		     .key = "txn/s",
		     .key_len = 5,
		     .value = "yes",
		     .value_len = 3},
		    {.type = MER_ETCD_OP_RANGE, .key = "txn/k", .key_len = 5},
		    {.type = MER_ETCD_OP_DELETE,
		     .key = "txn/victim-s",
		     .key_len = 12},
		};
		struct mer_etcd_op fail[] = {
		    {.type = MER_ETCD_OP_PUT,
		     .key = "txn/f",
		     .key_len = 5,
		     .value = "no",
		     .value_len = 2},
		    {.type = MER_ETCD_OP_RANGE, .key = "txn/k", .key_len = 5},
		    {.type = MER_ETCD_OP_DELETE,
		     .key = "txn/victim-f",
		     .key_len = 12},
		};
		struct mer_etcd_txn_result r;
		T_OK(mer_etcd_txn(c, &cmp, 1, succ, 3, fail, 3, &r, &st));
		if (r.succeeded != cc->want)
			t_fail(__FILE__, __LINE__,
			       "case %zu: target %d result %d: succeeded=%d", i,
			       cc->target, cc->result, r.succeeded);
		T_EQ_INT(r.n, 3);
		T_EQ_INT(r.revision, st.revision);
		if (r.n == 3) {
			T_EQ_INT(r.results[0].type, MER_ETCD_OP_PUT);
			T_EQ_INT(r.results[1].type, MER_ETCD_OP_RANGE);
			T_EQ_INT(r.results[1].range.n, 1);
			if (r.results[1].range.n == 1)
				T_EXPECT(
				    value_is(&r.results[1].range.kvs[0], "v2"));
			T_EQ_INT(r.results[2].deleted, 1);
		}
		mer_etcd_txn_result_clear(&r);

		/* The effects are those of the branch that ran, only. */
		const char *ran = cc->want ? "txn/s" : "txn/f";
		const char *not_ran = cc->want ? "txn/f" : "txn/s";
		const char *gone = cc->want ? "txn/victim-s" : "txn/victim-f";
		const char *kept = cc->want ? "txn/victim-f" : "txn/victim-s";
		T_OK(mer_etcd_get(c, S(ran), &kv, NULL));
		mer_etcd_kv_clear(&kv);
		T_EQ_INT(mer_etcd_get(c, S(not_ran), &kv, NULL), MER_ENOTFOUND);
		T_EQ_INT(mer_etcd_get(c, S(gone), &kv, NULL), MER_ENOTFOUND);
		T_OK(mer_etcd_get(c, S(kept), &kv, NULL));
		mer_etcd_kv_clear(&kv);
		T_OK(mer_etcd_delete(c, S(ran), NULL, NULL));
		if (t_case_failed())
			return;
	}
}

CASE(txn_hundreds_of_ops)
{
	struct mer_etcd *c = client();
	struct mer_etcd_status st;
	struct mer_etcd_range r;
	enum { N = 300, TOO_MANY = 1100 };
	static char keys[TOO_MANY][24];
	static struct mer_etcd_op ops[TOO_MANY];

	T_ASSERT(c != NULL);
	for (int i = 0; i < TOO_MANY; i++) {
		snprintf(keys[i], sizeof(keys[i]), "many/%04d", i);
		ops[i] = (struct mer_etcd_op){
		    .type = MER_ETCD_OP_PUT,
		    .key = keys[i],
		    .key_len = strlen(keys[i]),
		    .value = "v",
		    .value_len = 1,
		};
	}
	struct mer_etcd_txn_result res;
	T_OK(mer_etcd_txn(c, NULL, 0, ops, N, NULL, 0, &res, &st));
	T_EQ_INT(res.succeeded, 1);
	T_EQ_INT(res.n, N);
	mer_etcd_txn_result_clear(&res);
	T_OK(mer_etcd_range_prefix(c, S("many/"), NULL, 0, 0, 0, 1, &r, NULL));
	T_EQ_INT(r.n, N);
	/* One txn, one revision: every key has the same mod_revision. */
	if (r.n == N)
		T_EQ_INT(r.kvs[0].mod_revision, r.kvs[N - 1].mod_revision);
	mer_etcd_range_clear(&r);

	/* Over the server's --max-txn-ops: etcd's own refusal. */
	T_EQ_INT(mer_etcd_txn(c, NULL, 0, ops, TOO_MANY, NULL, 0, NULL, &st),
		 MER_EREMOTE);
	T_CONTAINS(st.message, "too many operations");
	T_EQ_INT(st.http_status, 400);
}

CASE(conditional_helpers)
{
	struct mer_etcd *c = client();
	struct mer_etcd_status st;

	T_ASSERT(c != NULL);
	T_OK(mer_etcd_create(c, S("cond/a"), S("1"), 0, &st));
	int64_t rev = st.revision;
	T_EQ_INT(mer_etcd_create(c, S("cond/a"), S("2"), 0, &st), MER_EEXIST);
	T_EQ_INT(mer_etcd_put_if_mod_revision(c, S("cond/a"), S("3"), 0,
					      rev - 1, &st),
		 MER_ECOMPARE);
	T_OK(mer_etcd_put_if_mod_revision(c, S("cond/a"), S("4"), 0, rev, &st));
	int64_t rev2 = st.revision;
	/* The old revision is stale now. */
	T_EQ_INT(
	    mer_etcd_put_if_mod_revision(c, S("cond/a"), S("5"), 0, rev, &st),
	    MER_ECOMPARE);
	T_EQ_INT(mer_etcd_delete_if_mod_revision(c, S("cond/a"), rev, &st),
		 MER_ECOMPARE);
	T_OK(mer_etcd_delete_if_mod_revision(c, S("cond/a"), rev2, &st));
	/* mod_revision 0 means "absent". */
	T_OK(mer_etcd_put_if_mod_revision(c, S("cond/a"), S("6"), 0, 0, &st));
}

static int fenced_calls;
static int64_t fenced_epoch;

static void on_fenced(void *arg, int64_t epoch)
{
	(void)arg;
	fenced_calls++;
	fenced_epoch = epoch;
}

/* The leader fence: every write carries the guard; a lost guard is told
 * apart from the caller's own compares, writes nothing and calls back. */
CASE(guard_fences_writes)
{
	struct mer_etcd *c = client(), *other = client();
	struct mer_etcd_status st;
	struct mer_etcd_kv kv = {0};
	int64_t deleted = -1;

	T_ASSERT(c != NULL && other != NULL);
	fenced_calls = 0;
	T_OK(mer_etcd_create(other, S("fence/leader"), S("me"), 0, &st));
	int64_t epoch = st.revision;
	T_OK(mer_etcd_guard_set(c, S("fence/leader"), epoch, on_fenced, NULL));
	/* While the guard holds, writes go through as before. */
	T_OK(mer_etcd_put(c, S("fence/a"), S("1"), 0, &st));
	int64_t rev = st.revision;
	T_OK(mer_etcd_get(other, S("fence/a"), &kv, NULL));
	T_EQ_INT(kv.mod_revision, rev);
	mer_etcd_kv_clear(&kv);
	T_EQ_INT(mer_etcd_put_if_mod_revision(c, S("fence/a"), S("2"), 0,
					      rev - 1, &st),
		 MER_ECOMPARE);
	T_EQ_INT(mer_etcd_create(c, S("fence/a"), S("2"), 0, &st), MER_EEXIST);
	T_OK(
	    mer_etcd_put_if_mod_revision(c, S("fence/a"), S("3"), 0, rev, &st));
	struct mer_etcd_cmp cmp = {.key = "fence/a",
				   .key_len = 7,
				   .target = MER_ETCD_CMP_VALUE,
				   .result = MER_ETCD_CMP_EQUAL,
				   .value = "nope",
				   .value_len = 4};
	struct mer_etcd_op rd = {
	    .type = MER_ETCD_OP_RANGE, .key = "fence/a", .key_len = 7};
	struct mer_etcd_op wr = {.type = MER_ETCD_OP_PUT,
				 .key = "fence/b",
				 .key_len = 7,
				 .value = "x",
				 .value_len = 1};
	struct mer_etcd_txn_result r;
	T_OK(mer_etcd_txn(c, &cmp, 1, &wr, 1, &rd, 1, &r, &st));
	T_EQ_INT(r.succeeded, 0);
	T_EQ_INT(r.n, 1);
	T_EQ_INT(r.n ? (int64_t)r.results[0].range.n : 0, 1);
	T_EXPECT(r.revision > 0);
	mer_etcd_txn_result_clear(&r);
	T_OK(mer_etcd_delete(c, S("fence/a"), &deleted, &st));
	T_EQ_INT(deleted, 1);
	T_EQ_INT(fenced_calls, 0);

	/* Another epoch takes the key: every write is refused. */
	T_OK(mer_etcd_delete(other, S("fence/leader"), NULL, NULL));
	T_OK(mer_etcd_create(other, S("fence/leader"), S("you"), 0, &st));
	T_EQ_INT(mer_etcd_put(c, S("fence/c"), S("1"), 0, &st), MER_ENOTLEADER);
	T_CONTAINS(st.message, "fenced");
	T_EQ_INT(fenced_calls, 1);
	T_EQ_INT(fenced_epoch, epoch);
	T_EQ_INT(mer_etcd_txn(c, &cmp, 1, &wr, 1, &rd, 1, &r, &st),
		 MER_ENOTLEADER);
	T_EQ_INT(mer_etcd_create(c, S("fence/d"), S("1"), 0, &st),
		 MER_ENOTLEADER);
	T_EQ_INT(mer_etcd_delete_prefix(c, S("fence/"), NULL, &st),
		 MER_ENOTLEADER);
	T_EQ_INT(mer_etcd_get(other, S("fence/c"), &kv, NULL), MER_ENOTFOUND);
	T_EQ_INT(mer_etcd_get(other, S("fence/b"), &kv, NULL), MER_ENOTFOUND);
	T_EQ_INT(mer_etcd_get(other, S("fence/d"), &kv, NULL), MER_ENOTFOUND);
	/* Reads are not fenced. */
	T_OK(mer_etcd_get(c, S("fence/leader"), &kv, NULL));
	mer_etcd_kv_clear(&kv);
	T_OK(mer_etcd_txn(c, NULL, 0, &rd, 1, NULL, 0, NULL, NULL));
	T_EXPECT(mer_etcd_fenced_count(c) >= 4);

	/* Blocked: refused locally; cleared: plain writes again. */
	mer_etcd_guard_block(c);
	T_EQ_INT(mer_etcd_put(c, S("fence/e"), S("1"), 0, &st), MER_ENOTLEADER);
	T_EQ_INT(mer_etcd_get(other, S("fence/e"), &kv, NULL), MER_ENOTFOUND);
	mer_etcd_guard_clear(c);
	T_OK(mer_etcd_put(c, S("fence/e"), S("1"), 0, &st));
	T_EQ_INT(mer_etcd_guard_set(c, S("fence/leader"), 0, NULL, NULL),
		 MER_EINVAL);
	T_OK(mer_etcd_delete_prefix(other, S("fence/"), NULL, NULL));
}

CASE(remote_errors_keep_message)
{
	struct mer_etcd *c = client();
	struct mer_etcd_status st;
	struct mer_etcd_range r;

	T_ASSERT(c != NULL);
	T_EQ_INT(mer_etcd_put(c, "", 0, S("v"), 0, &st), MER_EREMOTE);
	T_CONTAINS(st.message, "key is not provided");
	T_EQ_INT(st.http_status, 400);
	T_EQ_INT(st.grpc_code, 3);

	T_EQ_INT(mer_etcd_put(c, S("err/x"), S("v"), 123456789, &st),
		 MER_EREMOTE);
	T_CONTAINS(st.message, "lease not found");

	/* Reading below the compacted revision. */
	T_OK(mer_etcd_put(c, S("err/c"), S("1"), 0, &st));
	int64_t old = st.revision;
	T_OK(mer_etcd_put(c, S("err/c"), S("2"), 0, &st));
	T_OK(mer_etcd_compact(c, st.revision, NULL));
	T_EQ_INT(
	    mer_etcd_range_prefix(c, S("err/"), NULL, 0, 0, old, 0, &r, &st),
	    MER_EREMOTE);
	T_CONTAINS(st.message, "compacted");
}

/* ---- leases ------------------------------------------------------------- */

CASE(lease_expiry_deletes_keys)
{
	struct mer_etcd *c = client();
	struct mer_etcd_kv kv;
	int64_t id = 0, ttl = 0;

	T_ASSERT(c != NULL);
	T_OK(mer_etcd_lease_grant(c, 1, &id, &ttl, NULL));
	T_EXPECT(id != 0);
	T_EXPECT(ttl >= 1);
	T_OK(mer_etcd_put(c, S("lease/exp"), S("v"), id, NULL));
	T_OK(mer_etcd_get(c, S("lease/exp"), &kv, NULL));
	T_EQ_INT(kv.lease, id);
	mer_etcd_kv_clear(&kv);

	long long t0 = t_now_ms();
	int rv;
	while ((rv = mer_etcd_get(c, S("lease/exp"), &kv, NULL)) == 0) {
		mer_etcd_kv_clear(&kv);
		if (t_now_ms() - t0 > 10000)
			break;
		t_sleep_ms(100);
	}
	T_EQ_INT(rv, MER_ENOTFOUND);
	T_EXPECT(t_now_ms() - t0 >= 500); /* not deleted at once */
	T_EQ_INT(mer_etcd_lease_keepalive_once(c, id, &ttl, NULL),
		 MER_EEXPIRED);
	T_OK(mer_etcd_lease_ttl(c, id, &ttl, NULL));
	T_EQ_INT(ttl, -1);
}

CASE(lease_keepalive_then_revoke)
{
	struct mer_etcd *c = client();
	struct mer_etcd_keeper *k = NULL;
	struct mer_etcd_kv kv;
	int64_t id = 0, ttl = 0;

	T_ASSERT(c != NULL);
	T_OK(mer_etcd_lease_grant(c, 2, &id, &ttl, NULL));
	T_OK(mer_etcd_put(c, S("lease/kept"), S("v"), id, NULL));
	T_OK(mer_etcd_keeper_start(c, id, ttl, NULL, NULL, &k));
	FX_TRACK(fx_keepers, k);
	/* Well past the TTL: only the keeper holds the key. */
	t_sleep_ms((int)ttl * 1000 * 2 + 1000);
	T_OK(mer_etcd_get(c, S("lease/kept"), &kv, NULL));
	mer_etcd_kv_clear(&kv);
	T_EXPECT(!mer_etcd_keeper_lost(k));
	T_OK(mer_etcd_lease_ttl(c, id, &ttl, NULL));
	T_EXPECT(ttl > 0);

	for (int i = 0; i < FX_MAX; i++)
		if (fx_keepers[i] == k)
			fx_keepers[i] = NULL;
	mer_etcd_keeper_stop(k);
	T_OK(mer_etcd_lease_revoke(c, id, NULL));
	/* Revocation deletes at once, not at expiry. */
	T_EQ_INT(mer_etcd_get(c, S("lease/kept"), &kv, NULL), MER_ENOTFOUND);
	T_EQ_INT(mer_etcd_lease_revoke(c, id, NULL), MER_ENOTFOUND);
}

struct lost_flag {
	pthread_mutex_t mu;
	int calls;
	int64_t id;
};

static void on_lost(void *arg, int64_t id)
{
	struct lost_flag *f = arg;

	pthread_mutex_lock(&f->mu);
	f->calls++;
	f->id = id;
	pthread_mutex_unlock(&f->mu);
}

CASE(keeper_reports_lost_lease)
{
	struct mer_etcd *c = client();
	struct mer_etcd_keeper *k = NULL;
	static struct lost_flag f = {.mu = PTHREAD_MUTEX_INITIALIZER};
	int64_t id = 0, ttl = 0;

	T_ASSERT(c != NULL);
	T_OK(mer_etcd_lease_grant(c, 3, &id, &ttl, NULL));
	f.calls = 0;
	T_OK(mer_etcd_keeper_start(c, id, ttl, on_lost, &f, &k));
	FX_TRACK(fx_keepers, k);
	T_OK(mer_etcd_lease_revoke(c, id, NULL));
	long long t0 = t_now_ms();
	while (!mer_etcd_keeper_lost(k) && t_now_ms() - t0 < 5000)
		t_sleep_ms(20);
	T_EXPECT(mer_etcd_keeper_lost(k));
	pthread_mutex_lock(&f.mu);
	T_EQ_INT(f.calls, 1);
	T_EQ_INT(f.id, id);
	pthread_mutex_unlock(&f.mu);
}

/* ---- watches ------------------------------------------------------------ */

CASE(watch_sees_puts_and_deletes)
{
	struct mer_etcd *c = client();
	struct mer_etcd_status s1, s2, s3;
	struct recorder *r = &rec_a;

	T_ASSERT(c != NULL);
	rec_init(r);
	struct mer_etcd_watch *w = watch_prefix(c, "w1/", 0, 0, r);
	T_ASSERT(w != NULL);
	T_ASSERT(watch_ready(w, 5000));
	T_OK(mer_etcd_put(c, S("w1/a"), S("1"), 0, &s1));
	T_OK(mer_etcd_put(c, S("w1x"), S("not watched"), 0, NULL));
	T_OK(mer_etcd_put(c, S("w1/b"), S("2"), 0, &s2));
	T_OK(mer_etcd_delete(c, S("w1/a"), NULL, &s3));
	T_EQ_INT(rec_wait(r, 3, 5000), 3);
	t_sleep_ms(200); /* nothing more may come */
	T_EQ_INT(rec_count(r), 3);
	T_EQ_INT(r->ev[0].kind, MER_ETCD_EV_PUT);
	T_EQ_STR(r->ev[0].key, "w1/a");
	T_EQ_STR(r->ev[0].value, "1");
	T_EQ_INT(r->ev[0].mod_revision, s1.revision);
	T_EQ_INT(r->ev[1].kind, MER_ETCD_EV_PUT);
	T_EQ_STR(r->ev[1].key, "w1/b");
	T_EQ_STR(r->ev[1].value, "2");
	T_EQ_INT(r->ev[1].mod_revision, s2.revision);
	T_EQ_INT(r->ev[2].kind, MER_ETCD_EV_DELETE);
	T_EQ_STR(r->ev[2].key, "w1/a");
	T_EQ_INT(r->ev[2].mod_revision, s3.revision);
	T_EQ_INT(mer_etcd_watch_next_revision(w), s3.revision + 1);
}

CASE(watch_from_revision_and_compacted)
{
	struct mer_etcd *c = client();
	struct mer_etcd_status st;
	struct recorder *r1 = &rec_a, *r2 = &rec_b;
	int64_t revs[3];

	T_ASSERT(c != NULL);
	for (int i = 0; i < 3; i++) {
		T_OK(mer_etcd_put(c, S("w2/k"), S("v"), 0, &st));
		revs[i] = st.revision;
	}
	/* History replay from a past revision. */
	rec_init(r1);
	T_ASSERT(watch_prefix(c, "w2/", revs[1], 0, r1) != NULL);
	T_EQ_INT(rec_wait(r1, 2, 5000), 2);
	T_EQ_INT(r1->ev[0].mod_revision, revs[1]);
	T_EQ_INT(r1->ev[1].mod_revision, revs[2]);

	/* The same from a compacted revision is reported, distinctly. */
	T_OK(mer_etcd_compact(c, revs[2], NULL));
	rec_init(r2);
	struct mer_etcd_watch *w = watch_prefix(c, "w2/", revs[0], 0, r2);
	T_ASSERT(w != NULL);
	T_EQ_INT(rec_wait(r2, 1, 5000), 1);
	T_EQ_INT(r2->ev[0].kind, MER_ETCD_EV_COMPACTED);
	T_EQ_INT(r2->ev[0].compact_revision, revs[2]);
	long long t0 = t_now_ms();
	while (!mer_etcd_watch_ended(w) && t_now_ms() - t0 < 2000)
		t_sleep_ms(10);
	T_EXPECT(mer_etcd_watch_ended(w));
	T_EQ_INT(rec_count(r2), 1);
}

CASE(watch_resumes_after_restart)
{
	struct mer_etcd_status st;
	struct recorder *r = &rec_a;
	char key[32];
	int64_t revs[9];

	T_OK(t_etcd_start(&fx_own));
	struct mer_etcd *c = client_on(t_etcd_url(fx_own), 0);
	T_ASSERT(c != NULL);
	rec_init(r);
	/* A 3 s back-off makes the watch stay away while etcd restarts and
	 * the next writes happen, so they must come from history. */
	struct mer_etcd_watch *w = watch_prefix(c, "wr/", 0, 3000, r);
	T_ASSERT(w != NULL);
	T_ASSERT(watch_ready(w, 5000));
	for (int i = 0; i < 3; i++) {
		snprintf(key, sizeof(key), "wr/%d", i);
		T_OK(mer_etcd_put(c, S(key), S(key), 0, &st));
		revs[i] = st.revision;
	}
	T_EQ_INT(rec_wait(r, 3, 5000), 3);

	T_OK(t_etcd_stop(fx_own));
	T_OK(t_etcd_restart(fx_own));
	for (int i = 3; i < 6; i++) {
		snprintf(key, sizeof(key), "wr/%d", i);
		T_OK(mer_etcd_put(c, S(key), S(key), 0, &st));
		revs[i] = st.revision;
	}
	int seen_before_resume = rec_count(r);
	T_EQ_INT(rec_wait(r, 6, 15000), 6);
	for (int i = 6; i < 9; i++) {
		snprintf(key, sizeof(key), "wr/%d", i);
		T_OK(mer_etcd_put(c, S(key), S(key), 0, &st));
		revs[i] = st.revision;
	}
	T_EQ_INT(rec_wait(r, 9, 5000), 9);
	t_sleep_ms(300);
	T_EQ_INT(rec_count(r), 9); /* none twice */
	for (int i = 0; i < 9 && i < rec_count(r); i++) {
		snprintf(key, sizeof(key), "wr/%d", i);
		T_EQ_STR(r->ev[i].key, key);
		T_EQ_INT(r->ev[i].mod_revision, revs[i]);
	}
	T_EXPECT(mer_etcd_watch_connects(w) >= 2);
	if (seen_before_resume != 3)
		printf("    note: watch was back before the writes (%d seen)\n",
		       seen_before_resume);
}

/* ---- endpoints, timeouts, threads --------------------------------------- */

CASE(failover_to_second_endpoint)
{
	struct t_etcd *e = etcd();
	struct mer_etcd_stats s0, s1;
	struct mer_etcd_kv kv;
	char eps[256];
	int dead;

	T_ASSERT(e != NULL);
	T_OK(t_free_port(&dead));
	snprintf(eps, sizeof(eps), "http://127.0.0.1:%d,%s", dead,
		 t_etcd_url(e));
	struct mer_etcd *c = client_on(eps, 0);
	T_ASSERT(c != NULL);
	T_EQ_INT(mer_etcd_current_endpoint(c), 0);
	struct mer_etcd_status st;
	T_OK(mer_etcd_put(c, S("fo/a"), S("1"), 0, &st));
	T_EQ_STR(st.message, ""); /* the dead endpoint's error is not kept */
	T_EQ_INT(mer_etcd_current_endpoint(c), 1);
	mer_etcd_get_stats(c, &s0);
	T_EQ_INT(s0.failovers, 1);
	/* Remembered: the next calls go straight to the live one. */
	T_OK(mer_etcd_get(c, S("fo/a"), &kv, NULL));
	mer_etcd_kv_clear(&kv);
	T_OK(mer_etcd_put(c, S("fo/a"), S("2"), 0, NULL));
	mer_etcd_get_stats(c, &s1);
	T_EQ_INT(s1.failovers, 1);
	T_EQ_INT(s1.requests, s0.requests + 2);
}

CASE(unreachable_when_etcd_is_down)
{
	struct mer_etcd_status st;
	struct mer_etcd_kv kv;

	T_OK(t_etcd_start(&fx_own));
	struct mer_etcd_opts o = {
	    .endpoints = t_etcd_url(fx_own),
	    .connect_timeout_ms = 500,
	    .request_timeout_ms = 1000,
	};
	struct mer_etcd *c = NULL;
	T_OK(mer_etcd_open(&o, &c));
	FX_TRACK(fx_clients, c);
	T_OK(mer_etcd_put(c, S("down/a"), S("1"), 0, NULL));
	T_OK(t_etcd_stop(fx_own));

	long long t0 = t_now_ms();
	T_EQ_INT(mer_etcd_put(c, S("down/a"), S("2"), 0, &st),
		 MER_EUNREACHABLE);
	T_EXPECT(t_now_ms() - t0 < 1500);
	T_CONTAINS(st.message, t_etcd_url(fx_own));
	T_EQ_INT(st.maybe_applied, 0);
	T_EQ_INT(mer_etcd_get(c, S("down/a"), &kv, &st), MER_EUNREACHABLE);

	/* And back: the same client works once etcd is. */
	T_OK(t_etcd_restart(fx_own));
	T_OK(mer_etcd_get(c, S("down/a"), &kv, &st));
	T_EXPECT(value_is(&kv, "1"));
	mer_etcd_kv_clear(&kv);
}

CASE(timeout_on_silent_server)
{
	struct sockaddr_in sa;
	socklen_t len = sizeof(sa);
	struct mer_etcd_status st;
	struct mer_etcd_kv kv;
	char url[64];

	/* Accepts TCP (the kernel does) but never answers. */
	fx_listen_fd = socket(AF_INET, SOCK_STREAM, 0);
	T_ASSERT(fx_listen_fd >= 0);
	memset(&sa, 0, sizeof(sa));
	sa.sin_family = AF_INET;
	sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	T_ASSERT(bind(fx_listen_fd, (struct sockaddr *)&sa, sizeof(sa)) == 0);
	T_ASSERT(listen(fx_listen_fd, 16) == 0);
	T_ASSERT(getsockname(fx_listen_fd, (struct sockaddr *)&sa, &len) == 0);
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", ntohs(sa.sin_port));
	struct mer_etcd_opts o = {
	    .endpoints = url,
	    .connect_timeout_ms = 500,
	    .request_timeout_ms = 800,
	};
	struct mer_etcd *c = NULL;
	T_OK(mer_etcd_open(&o, &c));
	FX_TRACK(fx_clients, c);

	long long t0 = t_now_ms();
	T_EQ_INT(mer_etcd_put(c, S("silent/a"), S("1"), 0, &st),
		 MER_EUNREACHABLE);
	long long dt = t_now_ms() - t0;
	T_EXPECT(dt >= 700 && dt < 2000);
	/* The request went out: etcd may have applied it. */
	T_EQ_INT(st.maybe_applied, 1);
	T_EQ_INT(mer_etcd_get(c, S("silent/a"), &kv, &st), MER_EUNREACHABLE);
	T_EQ_INT(st.maybe_applied, 0);
}

struct put_job {
	struct mer_etcd *c;
	int thread;
	int failures;
};

static void *put_worker(void *arg)
{
	struct put_job *j = arg;
	char key[32], val[32];

	for (int i = 0; i < 50; i++) {
		snprintf(key, sizeof(key), "conc/%d/%02d", j->thread, i);
		snprintf(val, sizeof(val), "t%d-%d", j->thread, i);
		if (mer_etcd_put(j->c, S(key), S(val), 0, NULL) != 0)
			j->failures++;
	}
	return NULL;
}

CASE(concurrent_puts_share_connections)
{
	enum { THREADS = 8 };
	struct t_etcd *e = etcd();
	struct put_job jobs[THREADS];
	pthread_t th[THREADS];
	struct mer_etcd_stats s;
	struct mer_etcd_range r;

	T_ASSERT(e != NULL);
	struct mer_etcd *c = client_on(t_etcd_url(e), THREADS);
	T_ASSERT(c != NULL);
	int started = 0;
	for (int i = 0; i < THREADS; i++) {
		jobs[i] = (struct put_job){.c = c, .thread = i};
		if (pthread_create(&th[i], NULL, put_worker, &jobs[i]) != 0)
			break;
		started++;
	}
	/* Join before any check can return: the threads use c. */
	for (int i = 0; i < started; i++)
		pthread_join(th[i], NULL);
	T_ASSERT(started == THREADS);
	for (int i = 0; i < THREADS; i++)
		T_EQ_INT(jobs[i].failures, 0);
	T_OK(mer_etcd_range_prefix(c, S("conc/"), NULL, 0, 0, 0, 0, &r, NULL));
	T_EQ_INT(r.n, THREADS * 50);
	for (size_t i = 0; i < r.n; i++) {
		int t = -1, k = -1;
		char want[32];
		sscanf(r.kvs[i].key, "conc/%d/%d", &t, &k);
		snprintf(want, sizeof(want), "t%d-%d", t, k);
		T_EXPECT(value_is(&r.kvs[i], want));
	}
	mer_etcd_range_clear(&r);

	/* 401 requests over at most one connection per thread. */
	mer_etcd_get_stats(c, &s);
	T_EQ_INT(s.requests, THREADS * 50 + 1);
	T_EXPECT(s.connections <= THREADS);

	/* Sequential calls reuse one kept-alive connection. */
	uint64_t before = s.connections;
	for (int i = 0; i < 100; i++) {
		struct mer_etcd_kv kv;
		T_OK(mer_etcd_get(c, S("conc/0/00"), &kv, NULL));
		mer_etcd_kv_clear(&kv);
	}
	mer_etcd_get_stats(c, &s);
	T_EQ_INT(s.connections, before);
}

CASE(tls_with_client_certificates)
{
	static struct t_certs certs;
	struct mer_etcd_status st;
	struct mer_etcd_kv kv;

	T_OK(t_tmpdir("etcd-tls", &fx_dir));
	T_OK(t_make_certs(fx_dir, &certs));
	struct t_etcd_tls tls = {
	    .ca_file = certs.ca,
	    .cert_file = certs.server_cert,
	    .key_file = certs.server_key,
	    .client_cert_file = certs.client_cert,
	    .client_key_file = certs.client_key,
	};
	T_OK(t_etcd_start_tls(&tls, &fx_own));
	T_EXPECT(strncmp(t_etcd_url(fx_own), "https://", 8) == 0);

	struct mer_etcd_opts o = {
	    .endpoints = t_etcd_url(fx_own),
	    .ca_file = certs.ca,
	    .cert_file = certs.client_cert,
	    .key_file = certs.client_key,
	};
	struct mer_etcd *c = NULL;
	T_OK(mer_etcd_open(&o, &c));
	FX_TRACK(fx_clients, c);
	T_OK(mer_etcd_put(c, S("tls/a"), S("secret-free"), 0, &st));
	T_OK(mer_etcd_get(c, S("tls/a"), &kv, &st));
	T_EXPECT(value_is(&kv, "secret-free"));
	mer_etcd_kv_clear(&kv);

	/* The watch's own connection uses the same TLS settings. */
	struct recorder *r = &rec_a;
	rec_init(r);
	struct mer_etcd_watch *w = watch_prefix(c, "tls/", 0, 0, r);
	T_ASSERT(w != NULL);
	T_ASSERT(watch_ready(w, 5000));
	T_OK(mer_etcd_put(c, S("tls/b"), S("2"), 0, &st));
	T_EQ_INT(rec_wait(r, 1, 5000), 1);
	T_EQ_STR(r->ev[0].key, "tls/b");

	/* Without a client certificate etcd refuses the handshake. */
	o.cert_file = o.key_file = NULL;
	T_OK(mer_etcd_open(&o, &c));
	FX_TRACK(fx_clients, c);
	T_EQ_INT(mer_etcd_get(c, S("tls/a"), &kv, &st), MER_EUNREACHABLE);
	T_EXPECT(st.message[0] != '\0');

	/* Without our CA the client refuses etcd's certificate. */
	o.ca_file = NULL;
	o.cert_file = certs.client_cert;
	o.key_file = certs.client_key;
	T_OK(mer_etcd_open(&o, &c));
	FX_TRACK(fx_clients, c);
	T_EQ_INT(mer_etcd_get(c, S("tls/a"), &kv, &st), MER_EUNREACHABLE);
	T_CONTAINS(st.message, "certificate");
}

static const struct t_case cases[] = {
    {"prefix_end_and_open_args", case_prefix_end_and_open_args},
    {"put_get", case_put_get},
    {"range_paging", case_range_paging},
    {"binary_values", case_binary_values},
    {"delete_and_delete_prefix", case_delete_and_delete_prefix},
    {"txn_compares_both_branches", case_txn_compares_both_branches},
    {"txn_hundreds_of_ops", case_txn_hundreds_of_ops},
    {"conditional_helpers", case_conditional_helpers},
    {"guard_fences_writes", case_guard_fences_writes},
    {"remote_errors_keep_message", case_remote_errors_keep_message},
    {"lease_expiry_deletes_keys", case_lease_expiry_deletes_keys},
    {"lease_keepalive_then_revoke", case_lease_keepalive_then_revoke},
    {"keeper_reports_lost_lease", case_keeper_reports_lost_lease},
    {"watch_sees_puts_and_deletes", case_watch_sees_puts_and_deletes},
    {"watch_from_revision_and_compacted",
     case_watch_from_revision_and_compacted},
    {"watch_resumes_after_restart", case_watch_resumes_after_restart},
    {"failover_to_second_endpoint", case_failover_to_second_endpoint},
    {"unreachable_when_etcd_is_down", case_unreachable_when_etcd_is_down},
    {"timeout_on_silent_server", case_timeout_on_silent_server},
    {"concurrent_puts_share_connections",
     case_concurrent_puts_share_connections},
    {"tls_with_client_certificates", case_tls_with_client_certificates},
};

T_MAIN("etcd", cases)
