/*
 * The broker's job store in etcd (docs/STATE.md): job records, a per-tenant
 * index for listing, and idempotency keys. Submissions are group-committed:
 * jobs that arrive while a txn is in flight are written together in the
 * next one, so one fsync in etcd acknowledges many jobs; a job is reported
 * stored only after etcd has applied its txn. Every later change of a
 * record is a txn guarded by the mod_revision it was read at.
 * Not placement or dispatch (placer.c); not sites, tokens or policy.
 */
#ifndef MERIDIAN_BROKER_STORE_H
#define MERIDIAN_BROKER_STORE_H

#include <stddef.h>
#include <stdint.h>

#include <jansson.h>

#include "common/etcd.h"

#define MER_JOB_ID_LEN 20 /* "j" + 11 hex ms + 8 hex random */
#define MER_JOB_ID_SIZE (MER_JOB_ID_LEN + 1)
#define MER_CURSOR_SIZE 160
/* An in-progress idempotency record older than this is abandoned (its
 * broker died before the job was written) and may be taken over. */
#define MER_IDEM_STALE_S 60
/* Reservations are also attached to the broker's lease of this TTL, so a
 * crashed broker's reservations vanish within it. */
#define MER_IDEM_LEASE_S 5

struct mer_store;

struct mer_store_opts {
	struct mer_etcd *etcd; /* must outlive the store */
	const char *prefix;    /* "/meridian" */
	unsigned batch_max;    /* jobs per txn; 0 = 128 */
	unsigned linger_ms;    /* extra wait to fill a batch; 0 = none */
	unsigned committers;   /* txns in flight at once; 0 = 2 */
	/* etcd's --max-txn-ops: a batch never has more ops; 0 = 128, etcd's
	 * default. A new job takes 2 ops (3 with an idempotency key). */
	unsigned max_txn_ops;
	/* How long a finished idempotency record (the answer a retry gets)
	 * is kept at least, in s; etcd deletes it within 1/24 more (a lease
	 * per window). 0 = for ever. */
	long long idem_keep_s;
	/* Called (from a committer thread) for each job once stored. */
	void (*on_stored)(void *arg, const char *id);
	/* Called with the duration of each etcd txn the store runs. */
	void (*observe)(void *arg, double seconds);
	void *arg;
};

int mer_store_open(const struct mer_store_opts *o, struct mer_store **out);
/* Fails queued submissions with MER_ECLOSED, joins threads, frees. */
void mer_store_close(struct mer_store *s);

/* A new unique, time-ordered job id. */
void mer_store_new_id(char out[MER_JOB_ID_SIZE]);
int mer_job_id_valid(const char *id);

/* What a submission got. response is a new reference. */
struct mer_submit_result {
	int status; /* 201, or the first response's status on replay */
	json_t *response;
	int replayed; /* 1: the answer of an earlier identical request */
};

/*
 * Stores record (borrowed; must hold "id", "tenant", "name", "state",
 * "created_at") and answers with response (borrowed, kept for replays).
 * With idem_key (NULL for none), body_hash identifies the request body:
 *  - a first request reserves the key, stores the job and the response in
 *    the same txn, and answers 201;
 *  - a repeat with the same body gets the stored answer (replayed = 1);
 *  - a repeat with another body: MER_EINVAL (the API's 422);
 *  - a repeat while the first is still being stored: MER_EBUSY (409).
 * Other errors: MER_EUNREACHABLE/MER_EREMOTE (etcd), MER_ECLOSED.
 */
int mer_store_submit(struct mer_store *s, const json_t *record,
		     const json_t *response, const char *idem_key,
		     const char body_hash[65], struct mer_submit_result *res);

/* The record of job id (new reference) and its mod_revision, from etcd. */
int mer_store_get(struct mer_store *s, const char *id, json_t **rec,
		  int64_t *mod_rev);

/*
 * As mer_store_get, but from the store's cache of records this broker
 * recently wrote or read when it has one: possibly behind etcd if another
 * writer changed it since. For decisions a guarded update checks again
 * (the placer's look at a job); never for answers to clients. The record
 * is shared: do not change it (copy it).
 */
int mer_store_get_cached(struct mer_store *s, const char *id, json_t **rec,
			 int64_t *mod_rev);

struct mer_list_query {
	const char *tenant; /* NULL: every tenant (admins) */
	const char *state;  /* NULL: any */
	const char *name;   /* NULL: any */
	const char *cursor; /* NULL: from the start */
	unsigned limit;	    /* 1.. */
};

/*
 * Job summaries ({"id","tenant","name","state","priority","created_at"})
 * in id (time) order. *next gets a cursor when more may follow, else "".
 * MER_EINVAL for a cursor that is not one (or another tenant's).
 */
int mer_store_list(struct mer_store *s, const struct mer_list_query *q,
		   json_t **items, char next[MER_CURSOR_SIZE]);

/*
 * Changes a record: reads it, calls mutate on a copy, and writes the copy
 * in a txn guarded by the mod_revision read, retrying (re-reading) when
 * another writer got there first. mutate returns 0 to write, MER_ECANCELED
 * to write nothing (success), or an error that is returned. *after (may be
 * NULL) gets the record as written (new reference). mutate may be called
 * more than once. The first try starts from the cached record (see
 * mer_store_get_cached) and costs no read; the write goes through the
 * group commit, so updates share txns with submissions and each other.
 */
typedef int (*mer_store_mutate_fn)(void *arg, json_t *rec);

/* Extra etcd ops written in the same txn as a record's update. */
struct mer_store_ops;
/* Adds a put of key (copied) = value (copied). */
int mer_store_ops_put(struct mer_store_ops *o, const char *key,
		      const char *value);
/* Adds an op of type MER_ETCD_OP_PUT or MER_ETCD_OP_DELETE (value NULL). */
int mer_store_ops_add(struct mer_store_ops *o, int type, const char *key,
		      const char *value);
/* Called after mutate with the record about to be written: adds the ops
 * that must be written with it (all or nothing). Returns 0 or an error. */
typedef int (*mer_store_extra_fn)(void *arg, const json_t *rec,
				  struct mer_store_ops *ops);
int mer_store_update(struct mer_store *s, const char *id,
		     mer_store_mutate_fn mutate, void *arg, json_t **after);
/* mer_store_update, with extra (may be NULL) adding ops to the same txn;
 * MER_ETOOBIG when they do not fit one txn (max_txn_ops). */
int mer_store_update_ops(struct mer_store *s, const char *id,
			 mer_store_mutate_fn mutate, mer_store_extra_fn extra,
			 void *arg, json_t **after);

/* Calls fn for every job record (paged, one snapshot per page). */
int mer_store_scan(struct mer_store *s,
		   void (*fn)(void *arg, const json_t *rec), void *arg);
/* Calls fn for every key under "<prefix>/<what>" whose value is JSON
 * (paged, one snapshot per page); rest is the key after that. */
int mer_store_scan_prefix(struct mer_store *s, const char *what,
			  void (*fn)(void *arg, const char *rest,
				     const json_t *v),
			  void *arg);

struct mer_store_stats {
	uint64_t txns;	    /* batch txns committed */
	uint64_t jobs;	    /* jobs stored */
	uint64_t conflicts; /* guarded updates that had to retry */
	uint64_t etcd_errors;
};
void mer_store_get_stats(struct mer_store *s, struct mer_store_stats *out);

/* The etcd key of a name under the store's prefix: "<prefix>/<what>".
 * Returns the length, or 0 when it does not fit. */
size_t mer_store_key(const struct mer_store *s, char *out, size_t n,
		     const char *fmt, ...)
    __attribute__((format(printf, 4, 5)));

#endif
