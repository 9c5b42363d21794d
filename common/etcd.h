/*
 * etcd v3 client over libcurl and etcd's JSON gateway (/v3/kv/...,
 * /v3/lease/..., /v3/watch; etcd 3.4). Keys and values are binary-safe byte
 * strings (pointer + length); base64 and the gateway's int64-as-string encoding
 * are handled inside. See docs/ETCD.md for how requests, errors and retries
 * work.
 *
 * Threads: one struct mer_etcd is shared by every thread of a program. All
 * calls on it are thread-safe and blocking (bounded by the configured
 * timeouts). Requests reuse kept-alive connections from a small pool of
 * curl handles; a call never opens a new TCP connection when an idle one to
 * the same endpoint exists.
 *
 * Errors (enum mer_err): 0 on success; MER_EUNREACHABLE when no endpoint
 * could be reached or none answered within the timeout; MER_EREMOTE when
 * etcd answered with an error (its message in status->message);
 * MER_ECOMPARE from the conditional helpers when a compare failed;
 * MER_ENOTFOUND for a missing key or lease; MER_EPROTO when the answer was
 * not what the gateway sends; MER_EINVAL, MER_ENOMEM, MER_ETOOBIG.
 *
 * Every call takes an optional struct mer_etcd_status * (NULL to ignore):
 * it is the thread-safe way to get etcd's error text and the revision of
 * the store after the call.
 *
 * Limits: etcd refuses a txn with more than --max-txn-ops operations
 * (default 128, compares not counted) or a request over --max-request-bytes
 * (default 1.5 MiB) with MER_EREMOTE. Meridian batches hundreds of writes per
 * txn, so its etcd must run with --max-txn-ops raised (e.g. 1024); this
 * client itself has no op limit.
 */
#ifndef MERIDIAN_ETCD_H
#define MERIDIAN_ETCD_H

#include <stddef.h>
#include <stdint.h>

struct mer_etcd;

struct mer_etcd_opts {
	/* Comma-separated endpoint URLs, "http://127.0.0.1:2379" or
	 * "https://..."; tried in order, starting from the one that last
	 * worked. Required. */
	const char *endpoints;
	/* TCP (and TLS) connect timeout per endpoint; 0 = 2000 ms. */
	long connect_timeout_ms;
	/* Total time for one request to one endpoint, connect included;
	 * 0 = 5000 ms. A call tries each endpoint at most once, so it can
	 * last up to n_endpoints times this. */
	long request_timeout_ms;
	/* TLS (https:// endpoints): CA bundle to verify etcd with (NULL =
	 * the system store), and a client certificate and key (PEM) when
	 * etcd runs with --client-cert-auth. Paths are copied. */
	const char *ca_file;
	const char *cert_file;
	const char *key_file;
	/* Idle curl handles (kept-alive connections) kept for reuse; 0 = 8.
	 * More threads than this may still run calls at once: extra handles
	 * are made on demand and closed after use. */
	unsigned pool_size;
	/* Largest response accepted, in bytes; 0 = 64 MiB. Bigger answers
	 * fail with MER_ETOOBIG (page with a limit instead). */
	size_t max_response_bytes;
};

/* What etcd said about a call. */
struct mer_etcd_status {
	/* The store revision in the response header (after a put or txn: the
	 * revision it created); 0 when etcd did not answer. */
	int64_t revision;
	/* HTTP status and gRPC code of an error answer (0 when none). */
	int http_status;
	int grpc_code;
	/* Set when a transport error hit a write after the request may have
	 * reached etcd: it may or may not have been applied. */
	int maybe_applied;
	/* etcd's error message, or a description of a transport error; ""
	 * on success. Never holds keys' values. */
	char message[256];
};

/*
 * Creates a client. Does not connect (the first call does). The options are
 * copied. MER_EINVAL for an empty or malformed endpoint list.
 */
int mer_etcd_open(const struct mer_etcd_opts *opts, struct mer_etcd **out);

/* Closes every connection and frees the client. Watches and keepers made
 * from it must be stopped first. Accepts NULL. Not concurrent with calls. */
void mer_etcd_close(struct mer_etcd *c);

/* Index (0-based, in opts.endpoints) of the endpoint the next call tries
 * first: the last one that answered. Thread-safe. */
unsigned mer_etcd_current_endpoint(const struct mer_etcd *c);

struct mer_etcd_stats {
	uint64_t requests;    /* HTTP requests sent (attempts, not calls) */
	uint64_t connections; /* new TCP connections opened for them */
	uint64_t failovers;   /* times a call moved on to another endpoint */
};
/* Counters since open (a consistent-enough snapshot). Thread-safe. */
void mer_etcd_get_stats(const struct mer_etcd *c, struct mer_etcd_stats *out);

/* A key-value pair as stored. key and value are malloc'd and followed by a
 * NUL not counted in their lengths (value is "" not NULL when empty). */
struct mer_etcd_kv {
	char *key;
	size_t key_len;
	char *value;
	size_t value_len;
	int64_t create_revision;
	int64_t mod_revision;
	int64_t version;
	int64_t lease;
};

/* Frees what a kv owns (not kv itself); accepts NULL. */
void mer_etcd_kv_clear(struct mer_etcd_kv *kv);

/* ---- single keys ---------------------------------------------------- */

/* Sets key to value (lease 0 = none). st->revision is the key's new
 * mod_revision. */
int mer_etcd_put(struct mer_etcd *c, const void *key, size_t key_len,
		 const void *value, size_t value_len, int64_t lease,
		 struct mer_etcd_status *st);

/* Reads key into *kv (caller clears it with mer_etcd_kv_clear).
 * MER_ENOTFOUND when absent (kv is then zeroed). */
int mer_etcd_get(struct mer_etcd *c, const void *key, size_t key_len,
		 struct mer_etcd_kv *kv, struct mer_etcd_status *st);

/* Deletes key; *deleted (may be NULL) gets 0 or 1. Absent keys are not an
 * error. */
int mer_etcd_delete(struct mer_etcd *c, const void *key, size_t key_len,
		    int64_t *deleted, struct mer_etcd_status *st);

/* Deletes every key starting with prefix (an empty prefix is refused with
 * MER_EINVAL: use a real prefix). *deleted (may be NULL) gets the count. */
int mer_etcd_delete_prefix(struct mer_etcd *c, const void *prefix,
			   size_t prefix_len, int64_t *deleted,
			   struct mer_etcd_status *st);

/* Conditional writes for optimistic concurrency. Each is one txn:
 *  - put_if_mod_revision: put only if key's mod_revision == mod_revision
 *    (0 = only if the key does not exist);
 *  - create: put only if the key does not exist (MER_EEXIST otherwise);
 *  - delete_if_mod_revision: delete only if key's mod_revision matches.
 * A failed condition gives MER_ECOMPARE (MER_EEXIST for create). */
int mer_etcd_put_if_mod_revision(struct mer_etcd *c, const void *key,
				 size_t key_len, const void *value,
				 size_t value_len, int64_t lease,
				 int64_t mod_revision,
				 struct mer_etcd_status *st);
int mer_etcd_create(struct mer_etcd *c, const void *key, size_t key_len,
		    const void *value, size_t value_len, int64_t lease,
		    struct mer_etcd_status *st);
int mer_etcd_delete_if_mod_revision(struct mer_etcd *c, const void *key,
				    size_t key_len, int64_t mod_revision,
				    struct mer_etcd_status *st);

/* ---- ranges --------------------------------------------------------- */

struct mer_etcd_range {
	struct mer_etcd_kv *kvs; /* n entries, in key order */
	size_t n;
	int more;	  /* more keys exist past the last one (limit hit) */
	int64_t count;	  /* keys in the whole range, not just this page */
	int64_t revision; /* revision the page was read at (the one asked
			   * for, or the latest) */
};

/* Frees the kvs (not r itself); accepts NULL. */
void mer_etcd_range_clear(struct mer_etcd_range *r);

/*
 * Reads keys starting with prefix (empty prefix = every key), in key order,
 * at most limit of them (0 = no limit; mind max_response_bytes).
 * Paging: pass the previous page's last key as after (NULL for the first
 * page) to start just past it (after + "\0"), and the first page's
 * r->revision as revision so that all pages read the same snapshot (0 =
 * latest; MER_EREMOTE "required revision has been compacted" if too old).
 * keys_only leaves values empty. *r is replaced (clear it after use).
 */
int mer_etcd_range_prefix(struct mer_etcd *c, const void *prefix,
			  size_t prefix_len, const void *after,
			  size_t after_len, int64_t limit, int64_t revision,
			  int keys_only, struct mer_etcd_range *r,
			  struct mer_etcd_status *st);

/* The range_end that selects every key starting with prefix (prefix with
 * its last byte below 0xff incremented, trailing 0xff bytes dropped; "\0"
 * for an empty or all-0xff prefix, meaning "to the end"). out must hold
 * prefix_len bytes (1 if 0); *out_len gets the length. */
void mer_etcd_prefix_end(const void *prefix, size_t prefix_len, void *out,
			 size_t *out_len);

/* ---- transactions ----------------------------------------------------- */

enum mer_etcd_op_type {
	MER_ETCD_OP_PUT = 0,
	MER_ETCD_OP_RANGE = 1,
	MER_ETCD_OP_DELETE = 2
};

/* One operation of a txn. key is borrowed for the call. For RANGE and
 * DELETE, prefix != 0 selects every key starting with key, otherwise only
 * key itself. */
struct mer_etcd_op {
	enum mer_etcd_op_type type;
	const void *key;
	size_t key_len;
	int prefix;	   /* RANGE, DELETE */
	const void *value; /* PUT */
	size_t value_len;  /* PUT */
	int64_t lease;	   /* PUT; 0 = none */
	int64_t limit;	   /* RANGE; 0 = no limit */
};

enum mer_etcd_cmp_target {
	MER_ETCD_CMP_VALUE = 0,
	MER_ETCD_CMP_VERSION = 1,
	MER_ETCD_CMP_CREATE_REVISION = 2,
	MER_ETCD_CMP_MOD_REVISION = 3
};

enum mer_etcd_cmp_result {
	MER_ETCD_CMP_EQUAL = 0,
	MER_ETCD_CMP_NOT_EQUAL = 1,
	MER_ETCD_CMP_LESS = 2,
	MER_ETCD_CMP_GREATER = 3
};

/*
 * "key's <target> <result> operand". For VALUE the operand is value
 * (bytes, compared lexically); otherwise number. A missing key has version,
 * create_revision and mod_revision 0; a VALUE compare on a missing key is
 * false.
 */
struct mer_etcd_cmp {
	const void *key;
	size_t key_len;
	enum mer_etcd_cmp_target target;
	enum mer_etcd_cmp_result result;
	int64_t number;
	const void *value;
	size_t value_len;
};

/* The answer to one op of the branch that ran. */
struct mer_etcd_op_result {
	enum mer_etcd_op_type type;
	struct mer_etcd_range range; /* RANGE: the keys read */
	int64_t deleted;	     /* DELETE: keys deleted */
};

struct mer_etcd_txn_result {
	int succeeded;	  /* 1: compares held, success ops ran */
	int64_t revision; /* store revision after the txn */
	struct mer_etcd_op_result *results; /* n, one per op that ran */
	size_t n;
};

/* Frees what a txn result owns (not r itself); accepts NULL. */
void mer_etcd_txn_result_clear(struct mer_etcd_txn_result *r);

/*
 * Runs "if all cmps hold then success ops else failure ops" atomically.
 * Returns 0 whichever branch ran (see r->succeeded); r may be NULL when the
 * caller needs no results. Any array may be empty (NULL with count 0).
 * Op counts above etcd's --max-txn-ops give MER_EREMOTE.
 */
int mer_etcd_txn(struct mer_etcd *c, const struct mer_etcd_cmp *cmps,
		 size_t n_cmps, const struct mer_etcd_op *success,
		 size_t n_success, const struct mer_etcd_op *failure,
		 size_t n_failure, struct mer_etcd_txn_result *r,
		 struct mer_etcd_status *st);

/* Compacts the key history up to revision (older revisions can no longer
 * be read or watched from). */
int mer_etcd_compact(struct mer_etcd *c, int64_t revision,
		     struct mer_etcd_status *st);

/* ---- fencing ---------------------------------------------------------- */

#define MER_ETCD_GUARD_KEY_MAX 512

/* Called (from the thread whose write failed) when the guard's compare
 * failed: epoch is the create_revision the guard asked for. Must be quick
 * and must not clear or set the guard itself (hand the news to another
 * thread). */
typedef void (*mer_etcd_fenced_fn)(void *arg, int64_t epoch);

/*
 * Fencing for a leader: from now on every write this client makes (put,
 * delete, and any txn with a put or delete in a branch; conditional
 * helpers included) runs only if key's create_revision == create_revision
 * at the moment etcd applies it. Plain puts and deletes become one txn;
 * a txn with compares of its own is nested inside the guard's (etcd 3.3+)
 * so a failed guard is told apart from the caller's compares failing.
 * A failed guard gives MER_ENOTLEADER (nothing was written) and calls fn.
 * Reads, leases, watches and compaction are never guarded. key is copied
 * (at most MER_ETCD_GUARD_KEY_MAX bytes). MER_EINVAL for a bad key or a
 * create_revision <= 0.
 */
int mer_etcd_guard_set(struct mer_etcd *c, const void *key, size_t key_len,
		       int64_t create_revision, mer_etcd_fenced_fn fn,
		       void *arg);
/* Every write fails at once with MER_ENOTLEADER, without asking etcd (a
 * broker that is not the leader, or is stepping down). Reads still work. */
void mer_etcd_guard_block(struct mer_etcd *c);
/* Back to unguarded writes (the default). */
void mer_etcd_guard_clear(struct mer_etcd *c);
/* Writes refused by the guard (failed compares and blocked writes). */
uint64_t mer_etcd_fenced_count(const struct mer_etcd *c);

/* ---- leases ----------------------------------------------------------- */

/* Grants a lease of ttl_s seconds (etcd may round it up: ~2 s minimum).
 * *id gets its id, *granted_ttl_s (may be NULL) the TTL granted. */
int mer_etcd_lease_grant(struct mer_etcd *c, int64_t ttl_s, int64_t *id,
			 int64_t *granted_ttl_s, struct mer_etcd_status *st);

/* Refreshes a lease once. *ttl_s (may be NULL) gets its new TTL.
 * MER_EEXPIRED when the lease no longer exists (expired or revoked). */
int mer_etcd_lease_keepalive_once(struct mer_etcd *c, int64_t id,
				  int64_t *ttl_s, struct mer_etcd_status *st);

/* Revokes a lease: every key attached to it is deleted at once.
 * MER_ENOTFOUND when it does not exist. */
int mer_etcd_lease_revoke(struct mer_etcd *c, int64_t id,
			  struct mer_etcd_status *st);

/* Remaining TTL in seconds (*ttl_s = -1 when the lease is gone). */
int mer_etcd_lease_ttl(struct mer_etcd *c, int64_t id, int64_t *ttl_s,
		       struct mer_etcd_status *st);

struct mer_etcd_keeper;

/* Called once, from the keeper thread, when the lease is lost: etcd says it
 * no longer exists, or no refresh succeeded before it would have expired.
 * Must not call mer_etcd_keeper_stop on its own keeper. */
typedef void (*mer_etcd_lease_lost_fn)(void *arg, int64_t id);

/*
 * Keeps lease id alive from a background thread until stopped: refreshes
 * every ttl_s/3 seconds, retrying every 250 ms after a failure. On loss, calls
 * lost (may be NULL) once and ends. ttl_s is the lease's granted TTL. The
 * client must outlive the keeper.
 */
int mer_etcd_keeper_start(struct mer_etcd *c, int64_t id, int64_t ttl_s,
			  mer_etcd_lease_lost_fn lost, void *arg,
			  struct mer_etcd_keeper **out);

/* Non-zero once the keeper has given the lease up as lost. */
int mer_etcd_keeper_lost(struct mer_etcd_keeper *k);

/* Stops the thread (waits for it; returns within about one request
 * timeout) and frees k. Does not revoke the lease: call
 * mer_etcd_lease_revoke for that. Accepts NULL. */
void mer_etcd_keeper_stop(struct mer_etcd_keeper *k);

/* ---- watches ---------------------------------------------------------- */

enum mer_etcd_watch_kind {
	MER_ETCD_EV_PUT = 0,
	MER_ETCD_EV_DELETE = 1,
	/* The revision to resume from was compacted away: events were lost.
	 * compact_revision says the oldest revision still available. The
	 * watch has ended; re-read the state and start a new watch. */
	MER_ETCD_EV_COMPACTED = 2,
	/* etcd cancelled the watch for another reason (message says why);
	 * the watch has ended. */
	MER_ETCD_EV_CANCELED = 3
};

/* One event, valid only during the callback. For PUT, kv holds the new
 * key, value, mod_revision, create_revision, version and lease; for DELETE
 * the key and mod_revision (the deletion's revision). */
struct mer_etcd_event {
	enum mer_etcd_watch_kind kind;
	struct mer_etcd_kv kv;
	int64_t compact_revision; /* COMPACTED */
	const char *message;	  /* COMPACTED, CANCELED */
};

/* Called from the watch thread for each event, in revision order. It may
 * call other client functions, but not mer_etcd_watch_stop on its own
 * watch. While it runs, no further events are read. */
typedef void (*mer_etcd_watch_fn)(void *arg, const struct mer_etcd_event *ev);

struct mer_etcd_watch_opts {
	const void *key; /* the key, or the prefix when prefix != 0 */
	size_t key_len;
	int prefix;
	/* First revision to deliver; 0 = changes after the stream is first
	 * established (mer_etcd_watch_connects() > 0). To miss nothing
	 * after a read, pass the read's revision + 1. */
	int64_t start_revision;
	/* Back-off between reconnects: from retry_min_ms doubling up to
	 * retry_max_ms; 0 = 100 and 2000. */
	long retry_min_ms;
	long retry_max_ms;
};

struct mer_etcd_watch;

/*
 * Starts a watch on a background thread with its own connection. After a
 * dropped connection it reconnects (any endpoint) and resumes from the last
 * delivered revision + 1 (or the last progress notice), so no event is lost
 * or repeated. Returns once the thread is started; the first connection is
 * made in the background. The client must outlive the watch.
 */
int mer_etcd_watch_start(struct mer_etcd *c,
			 const struct mer_etcd_watch_opts *opts,
			 mer_etcd_watch_fn fn, void *arg,
			 struct mer_etcd_watch **out);

/* Revision the watch will resume from (last delivered + 1). Thread-safe. */
int64_t mer_etcd_watch_next_revision(struct mer_etcd_watch *w);
/* Times the watch stream was (re)established; 1 after the first connect. */
unsigned mer_etcd_watch_connects(struct mer_etcd_watch *w);
/* Non-zero once the watch has ended (COMPACTED or CANCELED). */
int mer_etcd_watch_ended(struct mer_etcd_watch *w);

/* Stops the thread promptly (it is woken from its wait), waits for it and
 * frees w. No callback runs after this returns. Accepts NULL. */
void mer_etcd_watch_stop(struct mer_etcd_watch *w);

#endif
