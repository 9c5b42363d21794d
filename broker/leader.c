/*
 * Leader election among brokers sharing one etcd prefix (docs/STATE.md
 * "Leader"): a campaign thread holds "<p>/leader" on an etcd lease, fences
 * the broker's etcd client with the key's create_revision (the epoch), and
 * starts or stops the leader-only work (link, placer, dispatch) as the role
 * changes. Not the work itself, and not the REST redirects (api.c).
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
#define URL_MAX 256
/* A follower re-reads the leader key (and the policy pointer) this often
 * even when the watch says nothing: a watch can lag or reconnect. */
#define FOLLOW_POLL_MS 1000
/* After failing to start the leader's work (the link address is taken),
 * wait this long before campaigning again. */
#define RETRY_MS 1000

struct mer_leader {
	struct mer_broker *b;
	struct mer_etcd *etcd; /* unguarded: campaigning is not fenced */
	char key[KEY_MAX];
	size_t key_len;
	char id[129];
	char rest[URL_MAX];
	char link[URL_MAX];

	pthread_mutex_t mu;
	pthread_cond_t cv;
	pthread_t th;
	int running;
	int stop;
	int wake;      /* the watch saw the key change */
	int fenced;    /* a guarded write failed */
	int lost;      /* the lease keeper gave up */
	int leading;   /* under b->role too */
	int64_t epoch; /* leading: our key's create_revision */
	/* Followers: the leader as last read (rest "" when none). */
	char lead_id[129];
	char lead_rest[URL_MAX];
	char lead_link[URL_MAX];
	int64_t lead_epoch;

	int64_t lease;
	struct mer_etcd_keeper *keeper;
	struct mer_etcd_watch *watch;
};

static void on_fenced(void *arg, int64_t epoch)
{
	struct mer_leader *l = arg;

	pthread_mutex_lock(&l->mu);
	if (l->leading && l->epoch == epoch) {
		l->fenced = 1;
		pthread_cond_signal(&l->cv);
	}
	pthread_mutex_unlock(&l->mu);
}

static void on_lease_lost(void *arg, int64_t id)
{
	struct mer_leader *l = arg;

	pthread_mutex_lock(&l->mu);
	if (l->lease == id) {
		l->lost = 1;
		pthread_cond_signal(&l->cv);
	}
	pthread_mutex_unlock(&l->mu);
}

static void on_watch(void *arg, const struct mer_etcd_event *ev)
{
	struct mer_leader *l = arg;

	(void)ev;
	pthread_mutex_lock(&l->mu);
	l->wake = 1;
	pthread_cond_signal(&l->cv);
	pthread_mutex_unlock(&l->mu);
}

/* Waits until woken or ms passed; mu held. Returns non-zero to stop. */
static int wait_ms(struct mer_leader *l, long ms)
{
	struct timespec ts;

	if (!l->stop && !l->wake && !l->fenced && !l->lost) {
		clock_gettime(CLOCK_REALTIME, &ts);
		long long ns =
		    (long long)ts.tv_nsec + (long long)ms * 1000000LL;
		ts.tv_sec += (time_t)(ns / 1000000000LL);
		ts.tv_nsec = (long)(ns % 1000000000LL);
		pthread_cond_timedwait(&l->cv, &l->mu, &ts);
	}
	l->wake = 0;
	return l->stop;
}

static void drop_lease(struct mer_leader *l, int revoke)
{
	struct mer_etcd_keeper *k;
	int64_t id;

	pthread_mutex_lock(&l->mu);
	k = l->keeper;
	id = l->lease;
	l->keeper = NULL;
	l->lease = 0;
	l->lost = 0;
	pthread_mutex_unlock(&l->mu);
	mer_etcd_keeper_stop(k);
	/* Revoking deletes the leader key at once, so followers take over
	 * without waiting for the TTL. */
	if (revoke && id)
		(void)mer_etcd_lease_revoke(l->etcd, id, NULL);
}

static int get_lease(struct mer_leader *l)
{
	int64_t id = 0, ttl = 0;
	struct mer_etcd_keeper *k = NULL;
	int rv;

	rv = mer_etcd_lease_grant(
	    l->etcd, (l->b->cfg.leader_ttl_ms + 999) / 1000, &id, &ttl, NULL);
	if (rv)
		return rv;
	pthread_mutex_lock(&l->mu);
	l->lease = id;
	l->lost = 0;
	pthread_mutex_unlock(&l->mu);
	rv = mer_etcd_keeper_start(l->etcd, id, ttl, on_lease_lost, l, &k);
	if (rv) {
		(void)mer_etcd_lease_revoke(l->etcd, id, NULL);
		pthread_mutex_lock(&l->mu);
		l->lease = 0;
		pthread_mutex_unlock(&l->mu);
		return rv;
	}
	pthread_mutex_lock(&l->mu);
	l->keeper = k;
	pthread_mutex_unlock(&l->mu);
	return 0;
}

static char *leader_value(struct mer_leader *l)
{
	json_t *v =
	    json_pack("{s:s, s:s, s:s, s:I}", "id", l->id, "rest", l->rest,
		      "link", l->link, "since", (json_int_t)time(NULL));
	char *t = v ? mer_json_dumps(v) : NULL;

	json_decref(v);
	return t;
}

/* Remembers who leads from the key's value (kv NULL: nobody). */
static void note_leader(struct mer_leader *l, const struct mer_etcd_kv *kv)
{
	json_t *v = kv ? json_loadb(kv->value, kv->value_len, 0, NULL) : NULL;
	const char *id = json_string_value(json_object_get(v, "id"));
	const char *rest = json_string_value(json_object_get(v, "rest"));
	const char *link = json_string_value(json_object_get(v, "link"));
	int changed;

	pthread_mutex_lock(&l->mu);
	changed =
	    kv ? l->lead_epoch != kv->create_revision : l->lead_epoch != 0;
	snprintf(l->lead_id, sizeof(l->lead_id), "%s", id ? id : "");
	snprintf(l->lead_rest, sizeof(l->lead_rest), "%s", rest ? rest : "");
	snprintf(l->lead_link, sizeof(l->lead_link), "%s", link ? link : "");
	l->lead_epoch = kv ? kv->create_revision : 0;
	pthread_mutex_unlock(&l->mu);
	if (changed && kv && !l->leading)
		mer_info("following", "leader=%s rest=%s epoch=%lld",
			 id ? id : "?", rest ? rest : "?",
			 (long long)kv->create_revision);
	json_decref(v); /* id, rest and link point into it */
}

/* Starts the leader-only work under the epoch; MER_* when it cannot (the
 * caller resigns). */
static int become_leader(struct mer_leader *l, int64_t epoch)
{
	struct mer_broker *b = l->b;
	char err[512] = "";
	int rv;

	rv = mer_etcd_guard_set(b->etcd, l->key, l->key_len, epoch, on_fenced,
				l);
	if (rv)
		return rv;
	pthread_mutex_lock(&l->mu);
	l->epoch = epoch;
	l->fenced = 0;
	pthread_mutex_unlock(&l->mu);
	mer_info("elected leader", "id=%s epoch=%lld", l->id, (long long)epoch);
	/* As after a restart: the policy file, then the link and the placer,
	 * whose first act is the recovery scan of jobs/. */
	rv = mer_broker_policy_load(b, err, sizeof(err));
	if (rv)
		mer_warn("policy not loaded as leader", "why=%s", err);
	pthread_rwlock_wrlock(&b->role);
	rv = mer_dispatch_start(b, err, sizeof(err));
	if (rv == 0 && (rv = mer_placer_start(b)) != 0)
		snprintf(err, sizeof(err), "placer: %s", mer_strerror(rv));
	if (rv == 0) {
		pthread_mutex_lock(&l->mu);
		l->leading = 1;
		pthread_mutex_unlock(&l->mu);
	} else {
		mer_placer_stop(b);
		mer_dispatch_stop(b);
	}
	pthread_rwlock_unlock(&b->role);
	if (rv) {
		mer_error("cannot lead", "why=%s", err);
		mer_etcd_guard_block(b->etcd);
		return rv;
	}
	/* The link's real address (port 0 in the config) is known now. */
	if (b->link && !b->cfg.advertise_link[0] &&
	    strcmp(l->link, mer_link_server_url(b->link)) != 0) {
		snprintf(l->link, sizeof(l->link), "%s",
			 mer_link_server_url(b->link));
		char *v = leader_value(l);
		if (v)
			(void)mer_etcd_put(b->etcd, l->key, l->key_len, v,
					   strlen(v), l->lease, NULL);
		free(v);
	}
	return 0;
}

/* Stops the leader-only work. After a lost term writes are refused first,
 * so whatever runs until the threads are joined cannot write under the old
 * epoch; a broker that is stopping keeps its fence until its last flush
 * is written. */
static void step_down(struct mer_leader *l, const char *why)
{
	struct mer_broker *b = l->b;

	if (why)
		mer_etcd_guard_block(b->etcd);
	mer_warn("stepping down", "id=%s epoch=%lld why=%s", l->id,
		 (long long)l->epoch, why ? why : "stopping");
	pthread_rwlock_wrlock(&b->role);
	pthread_mutex_lock(&l->mu);
	l->leading = 0;
	pthread_mutex_unlock(&l->mu);
	mer_placer_stop(b);
	mer_dispatch_stop(b);
	/* What the leader kept in memory is rebuilt from etcd by the next
	 * leader term, not carried over from this one. */
	pthread_mutex_lock(&b->pmu);
	mer_placer_free_table(b);
	b->nqueue = 0;
	b->pstop = 0;
	b->kick = 0;
	pthread_mutex_unlock(&b->pmu);
	mer_dispatch_reset(b);
	mer_etcd_guard_block(b->etcd);
	pthread_rwlock_unlock(&b->role);
	pthread_mutex_lock(&l->mu);
	l->epoch = 0;
	pthread_mutex_unlock(&l->mu);
}

/* While leading: returns why the term ended (NULL: asked to stop). */
static const char *hold(struct mer_leader *l)
{
	long check = (long)(l->b->cfg.leader_ttl_ms / 3);

	pthread_mutex_lock(&l->mu);
	for (;;) {
		if (wait_ms(l, check))
			break;
		if (l->fenced || l->lost)
			break;
		pthread_mutex_unlock(&l->mu);
		struct mer_etcd_kv kv = {0};
		int rv = mer_etcd_get(l->etcd, l->key, l->key_len, &kv, NULL);
		int64_t cr = rv == 0 ? kv.create_revision : 0;
		mer_etcd_kv_clear(&kv);
		pthread_mutex_lock(&l->mu);
		/* Unreachable etcd is not a lost term: the keeper decides
		 * that when the lease would have expired. */
		if ((rv == 0 && cr != l->epoch) || rv == MER_ENOTFOUND) {
			pthread_mutex_unlock(&l->mu);
			return "the leader key changed";
		}
	}
	const char *why = l->stop     ? NULL
			  : l->fenced ? "a write failed the leader fence"
				      : "the leader lease was lost";
	pthread_mutex_unlock(&l->mu);
	return why;
}

/* One campaign: 1 when this broker won (epoch set), 0 when another leads
 * (noted), or an error. */
static int campaign(struct mer_leader *l, int64_t *epoch)
{
	struct mer_etcd_kv kv = {0};
	struct mer_etcd_status st;
	char *val;
	int rv;

	rv = mer_etcd_get(l->etcd, l->key, l->key_len, &kv, NULL);
	if (rv == 0) {
		json_t *v = json_loadb(kv.value, kv.value_len, 0, NULL);
		const char *id = json_string_value(json_object_get(v, "id"));
		int mine = id && strcmp(id, l->id) == 0 && kv.lease != l->lease;
		json_decref(v);
		if (mine) {
			/* Our own id on another lease: this broker before a
			 * crash and restart. Its lease is revoked (the old
			 * process, should it still run, is fenced). */
			mer_info("taking over the leader key of a previous "
				 "run",
				 "id=%s epoch=%lld", l->id,
				 (long long)kv.create_revision);
			if (kv.lease)
				(void)mer_etcd_lease_revoke(l->etcd, kv.lease,
							    NULL);
			(void)mer_etcd_delete_if_mod_revision(
			    l->etcd, l->key, l->key_len, kv.mod_revision, NULL);
			mer_etcd_kv_clear(&kv);
			return MER_EBUSY; /* campaign again at once */
		}
		note_leader(l, &kv);
		mer_etcd_kv_clear(&kv);
		return 0;
	}
	if (rv != MER_ENOTFOUND)
		return rv;
	note_leader(l, NULL);
	val = leader_value(l);
	if (!val)
		return MER_ENOMEM;
	rv = mer_etcd_create(l->etcd, l->key, l->key_len, val, strlen(val),
			     l->lease, &st);
	free(val);
	if (rv == MER_EEXIST)
		return MER_EBUSY;
	if (rv)
		return rv;
	/* The txn's revision is the key's create_revision. */
	*epoch = st.revision;
	return 1;
}

static void *leader_main(void *arg)
{
	struct mer_leader *l = arg;
	struct mer_broker *b = l->b;

	for (;;) {
		pthread_mutex_lock(&l->mu);
		int stop = l->stop, lost = l->lost;
		pthread_mutex_unlock(&l->mu);
		if (stop)
			break;
		if (lost)
			drop_lease(l, 0);
		if (!l->lease && get_lease(l) != 0) {
			pthread_mutex_lock(&l->mu);
			wait_ms(l, RETRY_MS);
			pthread_mutex_unlock(&l->mu);
			continue;
		}
		int64_t epoch = 0;
		int rv = campaign(l, &epoch);
		if (rv == MER_EBUSY)
			continue;
		if (rv == 1) {
			if (become_leader(l, epoch) != 0) {
				drop_lease(l, 1);
				pthread_mutex_lock(&l->mu);
				wait_ms(l, RETRY_MS);
				pthread_mutex_unlock(&l->mu);
				continue;
			}
			const char *why = hold(l);
			step_down(l, why);
			/* Resign: a new lease for the next campaign, and
			 * the key (if still ours) goes now, not at TTL. */
			drop_lease(l, 1);
			continue;
		}
		if (rv != 0)
			mer_warn("campaign failed", "err=%s", mer_errname(rv));
		/* Following: keep the policy in step with the leader's. */
		mer_broker_policy_follow(b);
		pthread_mutex_lock(&l->mu);
		wait_ms(l, FOLLOW_POLL_MS);
		pthread_mutex_unlock(&l->mu);
	}
	drop_lease(l, 1);
	return NULL;
}

int mer_leader_start(struct mer_broker *b, char *err, size_t errlen)
{
	struct mer_leader *l = calloc(1, sizeof(*l));
	int rv;

	if (!l)
		return MER_ENOMEM;
	l->b = b;
	pthread_mutex_init(&l->mu, NULL);
	pthread_cond_init(&l->cv, NULL);
	b->leader = l;
	l->key_len = mer_store_key(b->store, l->key, sizeof(l->key), "leader");
	if (b->cfg.advertise_rest[0])
		snprintf(l->rest, sizeof(l->rest), "%s", b->cfg.advertise_rest);
	else
		/* listen.http with the port actually bound. */
		snprintf(l->rest, sizeof(l->rest), "%.*s:%d",
			 (int)(strrchr(b->cfg.http_listen, ':') -
			       b->cfg.http_listen),
			 b->cfg.http_listen, mer_broker_http_port(b));
	if (!b->cfg.advertise_rest[0] &&
	    (strstr(l->rest, "//0.0.0.0:") || strstr(l->rest, "//[::]:")))
		mer_warn("advertise.rest is not set and listen.http is a "
			 "wildcard address: followers cannot redirect writes "
			 "to this broker",
			 "rest=%s", l->rest);
	if (b->cfg.advertise_link[0])
		snprintf(l->link, sizeof(l->link), "%s", b->cfg.advertise_link);
	else if (b->cfg.link_listen)
		snprintf(l->link, sizeof(l->link), "%s", b->cfg.link_listen);
	snprintf(l->id, sizeof(l->id), "%.128s",
		 b->cfg.broker_id[0] ? b->cfg.broker_id : l->rest);
	if ((rv = mer_broker_etcd_open(b, &l->etcd, err, errlen)))
		return rv;
	struct mer_etcd_watch_opts wo = {.key = l->key, .key_len = l->key_len};
	if ((rv = mer_etcd_watch_start(l->etcd, &wo, on_watch, l, &l->watch))) {
		snprintf(err, errlen, "etcd watch: %s", mer_strerror(rv));
		return rv;
	}
	if (pthread_create(&l->th, NULL, leader_main, l) != 0) {
		snprintf(err, errlen, "leader thread: out of memory");
		return MER_ENOMEM;
	}
	l->running = 1;
	mer_info("campaigning", "id=%s rest=%s key=%s", l->id, l->rest, l->key);
	return 0;
}

void mer_leader_stop(struct mer_broker *b)
{
	struct mer_leader *l = b->leader;

	if (!l)
		return;
	if (l->running) {
		pthread_mutex_lock(&l->mu);
		l->stop = 1;
		pthread_cond_signal(&l->cv);
		pthread_mutex_unlock(&l->mu);
		pthread_join(l->th, NULL);
		l->running = 0;
	}
	mer_etcd_watch_stop(l->watch);
	l->watch = NULL;
}

void mer_leader_free(struct mer_broker *b)
{
	struct mer_leader *l = b->leader;

	if (!l)
		return;
	mer_leader_stop(b);
	mer_etcd_close(l->etcd);
	pthread_mutex_destroy(&l->mu);
	pthread_cond_destroy(&l->cv);
	free(l);
	b->leader = NULL;
}

void mer_leader_view(struct mer_broker *b, struct mer_leader_view *v)
{
	struct mer_leader *l = b->leader;

	memset(v, 0, sizeof(*v));
	if (!l)
		return;
	pthread_mutex_lock(&l->mu);
	v->leading = l->leading;
	if (l->leading) {
		v->epoch = l->epoch;
		snprintf(v->id, sizeof(v->id), "%s", l->id);
		snprintf(v->rest, sizeof(v->rest), "%s", l->rest);
		snprintf(v->link, sizeof(v->link), "%s", l->link);
	} else {
		v->epoch = l->lead_epoch;
		snprintf(v->id, sizeof(v->id), "%s", l->lead_id);
		snprintf(v->rest, sizeof(v->rest), "%s", l->lead_rest);
		snprintf(v->link, sizeof(v->link), "%s", l->lead_link);
	}
	pthread_mutex_unlock(&l->mu);
}

int mer_leader_enter(struct mer_broker *b, int64_t *epoch)
{
	struct mer_leader *l = b->leader;
	int leading;

	if (!l)
		return 0;
	pthread_rwlock_rdlock(&b->role);
	pthread_mutex_lock(&l->mu);
	leading = l->leading && !l->fenced && !l->lost;
	if (epoch)
		*epoch = l->epoch;
	pthread_mutex_unlock(&l->mu);
	if (!leading)
		pthread_rwlock_unlock(&b->role);
	return leading;
}

void mer_leader_leave(struct mer_broker *b)
{
	pthread_rwlock_unlock(&b->role);
}

int64_t mer_leader_epoch(struct mer_broker *b)
{
	struct mer_leader *l = b->leader;
	int64_t e;

	if (!l)
		return 0;
	pthread_mutex_lock(&l->mu);
	e = l->leading ? l->epoch : 0;
	pthread_mutex_unlock(&l->mu);
	return e;
}
