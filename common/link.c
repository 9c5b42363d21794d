/*
 * The federation link's transport: nng REQ/REP with contexts and aio on both
 * sides, sessions, long-polls, the agent's outbox and the counters of
 * rejected messages (docs/PROTOCOL.md). Not the cryptography (channel.c)
 * and not what reports, commands, keys or tokens mean (the hooks).
 *
 * Locking: the server has one mutex (srv->mu) over its tables, sites and
 * workers, and one per session over the channel state (counters, window).
 * No nng call that may run a callback is made with srv->mu held: nng runs
 * a stopped aio's callback synchronously, and our callbacks take srv->mu.
 */
#include "link.h"

#include <errno.h>
#include <limits.h>
#include <nng/nng.h>
#include <nng/protocol/reqrep0/rep.h>
#include <nng/protocol/reqrep0/req.h>
#include <nng/supplemental/util/platform.h>
#include <pthread.h>
#include <sodium.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "err.h"
#include "log.h"
#include "token.h"

#define NBUCKETS 1024
#define MAX_UNCONFIRMED 4096
#define SITE_UNCONFIRMED 4 /* per site key: replayed HELLOs stay local */
#define MAX_JOIN_SESSIONS 64
#define UNCONFIRMED_TTL_MS 30000
#define SITE_SESSIONS 2
#define GC_EVERY_MS 1000
#define DEFAULT_POLL_MAX_MS 60000
#define DEFAULT_POLL_WAIT_MS 25000
#define DEFAULT_IDLE_MS 600000
#define DEFAULT_RECEIVERS 16
#define DEFAULT_MAX_PARKED 10000
#define DEFAULT_TIMEOUT_MS 10000
#define DEFAULT_OUTBOX_MAX 10000
#define CMD_ID_MAX 256

static int64_t now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static int from_nng(int rv)
{
	switch (rv) {
	case 0:
		return 0;
	case NNG_ETIMEDOUT:
		return MER_ETIMEDOUT;
	case NNG_ECONNRESET:
	case NNG_ECONNREFUSED:
	case NNG_ECONNSHUT:
	case NNG_ECONNABORTED:
	case NNG_EADDRINVAL:
	case NNG_EUNREACHABLE:
		return MER_EUNREACHABLE;
	case NNG_ECLOSED:
		return MER_ECLOSED;
	case NNG_ENOMEM:
		return MER_ENOMEM;
	case NNG_ECANCELED:
		return MER_ECANCELED;
	case NNG_EMSGSIZE:
		return MER_ETOOBIG;
	}
	return MER_EIO;
}

/* A sealed payload must be one JSON object (PROTOCOL.md §3). */
static json_t *parse_object(const uint8_t *text, size_t len)
{
	json_error_t e;
	json_t *v =
	    json_loadb((const char *)text, len, JSON_REJECT_DUPLICATES, &e);

	if (v && !json_is_object(v)) {
		json_decref(v);
		v = NULL;
	}
	return v;
}

/* Seals text as a message of type into a new nng message: a request
 * (req NULL, agent side) or the reply to the request whose header is req
 * (broker side). The caller holds the session's lock. */
static int seal_msg(struct mer_chan_session *ch, int type, const uint8_t *req,
		    const char *text, size_t len, nng_msg **out)
{
	nng_msg *m;
	size_t n = 0;
	int rv;

	if (nng_msg_alloc(&m, len + MER_WIRE_OVERHEAD) != 0)
		return MER_ENOMEM;
	if (req)
		rv = mer_chan_seal_reply(ch, type, req, (const uint8_t *)text,
					 len, nng_msg_body(m),
					 len + MER_WIRE_OVERHEAD, &n);
	else
		rv =
		    mer_chan_seal(ch, type, (const uint8_t *)text, len,
				  nng_msg_body(m), len + MER_WIRE_OVERHEAD, &n);
	if (rv != 0) {
		nng_msg_free(m);
		return rv;
	}
	*out = m;
	return 0;
}

static char *error_text(int code, const char *message)
{
	json_t *o = json_pack("{s:i, s:s, s:s}", "code", code, "error",
			      mer_errname(code), "message",
			      message ? message : mer_strerror(code));
	char *s = o ? json_dumps(o, JSON_COMPACT) : NULL;

	json_decref(o);
	return s;
}

/* ============================== server ============================== */

struct cmd {
	json_t *obj;
	const char *id; /* inside obj */
	struct cmd *next;
};

struct ssess;

struct site {
	char name[MER_LINK_NAME_MAX];
	struct cmd *cmds;
	struct worker *parked;
	struct ssess *conf[SITE_SESSIONS]; /* confirmed, oldest first */
	int nconf;
	int nunconf; /* unconfirmed sessions of this site */
	int revoked;
	uint64_t revoked_gen; /* srv->revoke_gen when it was revoked */
	struct site *next;
};

struct ssess {
	struct mer_chan_session ch;
	pthread_mutex_t mu; /* over ch */
	int refs;	    /* under srv->mu; the table holds one */
	int in_table;
	int confirmed;
	int revoked;
	int join;
	struct site *site; /* NULL for join sessions */
	int64_t created_ms;
	int64_t last_ms;
	uint64_t seq; /* insertion order: "oldest" without clock ties */
	struct ssess *hnext;
};

enum wstate { W_RECV, W_SEND, W_PARKED, W_SPARE };

/* One nng context with its aio: receives a request, answers it (at once,
 * or later for a held long-poll). */
struct worker {
	struct mer_link_server *srv;
	nng_ctx ctx;
	nng_aio *aio;
	nng_aio *timer; /* long-poll hold */
	enum wstate state;
	int in_pool; /* counted in srv->pool (receiving workers) */
	int wake;    /* a held poll should be answered now */
	struct ssess *sess;
	struct site *site;
	int wait_ms;
	uint8_t req[MER_WIRE_HDR_LEN]; /* header of the held poll */
	struct worker *next_all;
	struct worker *next_spare;
};

struct mer_link_server {
	nng_socket sock;
	nng_listener listener;
	char url[256];
	struct mer_keypair key;
	struct mer_link_server_ops ops;
	size_t max_payload;
	size_t max_msg;
	uint32_t rekey_s;
	uint32_t rekey_msgs;
	int poll_max_ms;
	int idle_ms;
	int receivers;
	int max_parked;

	pthread_mutex_t mu;
	struct worker *workers;
	struct worker *spare;
	int pool;
	int parked;
	struct ssess *buckets[NBUCKETS];
	size_t nsess;
	size_t nunconf; /* unconfirmed, not join */
	size_t njoin;	/* join sessions (never confirmed) */
	uint64_t next_seq;
	uint64_t revoke_gen; /* bumped by every mer_link_server_revoke */
	struct site *sites;
	int64_t last_gc;
	int stopping;
	struct mer_link_stats st;
};

static void worker_cb(void *arg);
static void timer_cb(void *arg);

static struct site *site_find(struct mer_link_server *srv, const char *name)
{
	for (struct site *s = srv->sites; s; s = s->next)
		if (strcmp(s->name, name) == 0)
			return s;
	return NULL;
}

static struct site *site_get(struct mer_link_server *srv, const char *name)
{
	struct site *s = site_find(srv, name);

	if (s)
		return s;
	s = calloc(1, sizeof(*s));
	if (!s)
		return NULL;
	snprintf(s->name, sizeof(s->name), "%s", name);
	s->next = srv->sites;
	srv->sites = s;
	return s;
}

static void cmds_free(struct cmd *c)
{
	while (c) {
		struct cmd *n = c->next;
		json_decref(c->obj);
		free(c);
		c = n;
	}
}

static void sess_free(struct ssess *s)
{
	pthread_mutex_destroy(&s->mu);
	mer_chan_session_wipe(&s->ch);
	free(s);
}

static void sess_unref_locked(struct ssess *s)
{
	if (s && --s->refs == 0)
		sess_free(s);
}

static void sess_unref(struct mer_link_server *srv, struct ssess *s)
{
	if (!s)
		return;
	pthread_mutex_lock(&srv->mu);
	sess_unref_locked(s);
	pthread_mutex_unlock(&srv->mu);
}

static struct ssess *sess_lookup_locked(struct mer_link_server *srv,
					uint64_t id)
{
	for (struct ssess *s = srv->buckets[id % NBUCKETS]; s; s = s->hnext)
		if (s->ch.id == id)
			return s;
	return NULL;
}

static void sess_remove_locked(struct mer_link_server *srv, struct ssess *s)
{
	struct ssess **pp = &srv->buckets[s->ch.id % NBUCKETS];

	if (!s->in_table)
		return;
	while (*pp && *pp != s)
		pp = &(*pp)->hnext;
	if (*pp)
		*pp = s->hnext;
	s->in_table = 0;
	srv->nsess--;
	if (s->join) {
		srv->njoin--;
	} else if (!s->confirmed) {
		srv->nunconf--;
		if (s->site)
			s->site->nunconf--;
	}
	if (s->site) {
		struct site *st = s->site;
		for (int i = 0; i < st->nconf; i++) {
			if (st->conf[i] != s)
				continue;
			memmove(&st->conf[i], &st->conf[i + 1],
				(size_t)(st->nconf - i - 1) *
				    sizeof(st->conf[0]));
			st->nconf--;
			break;
		}
	}
	sess_unref_locked(s);
}

static int sess_expired(const struct mer_link_server *srv,
			const struct ssess *s, int64_t now, uint64_t messages)
{
	return now - s->created_ms > 2 * (int64_t)srv->rekey_s * 1000 ||
	       messages > 2 * (uint64_t)srv->rekey_msgs;
}

/* Drops idle, stale unconfirmed and past-hard-limit sessions. */
static void gc_locked(struct mer_link_server *srv, int64_t now)
{
	if (now - srv->last_gc < GC_EVERY_MS)
		return;
	srv->last_gc = now;
	for (size_t b = 0; b < NBUCKETS; b++) {
		struct ssess *s = srv->buckets[b];
		while (s) {
			struct ssess *n = s->hnext;
			if ((!s->confirmed &&
			     now - s->created_ms > UNCONFIRMED_TTL_MS) ||
			    now - s->last_ms > srv->idle_ms ||
			    now - s->created_ms >
				2 * (int64_t)srv->rekey_s * 1000 + 1000)
				sess_remove_locked(srv, s);
			s = n;
		}
	}
	srv->st.sessions = srv->nsess;
}

/* Drops the oldest unconfirmed session of one kind: join sessions (join
 * set), or normal ones of one site (st), or normal ones of any site. */
static void evict_oldest_locked(struct mer_link_server *srv, int join,
				const struct site *st)
{
	struct ssess *old = NULL;

	for (size_t b = 0; b < NBUCKETS; b++)
		for (struct ssess *s = srv->buckets[b]; s; s = s->hnext)
			if (!s->confirmed && s->join == join &&
			    (!st || s->site == st) &&
			    (!old || s->seq < old->seq))
				old = s;
	if (old)
		sess_remove_locked(srv, old);
}

/* Separate caps (PROTOCOL.md §6): join sessions cost an attacker nothing
 * to open, and HELLOs replayed for one site key should only ever push out
 * that site's own unconfirmed sessions, never everyone's. */
static void sess_insert_locked(struct mer_link_server *srv, struct ssess *s)
{
	size_t b;

	if (s->join) {
		if (srv->njoin >= MAX_JOIN_SESSIONS)
			evict_oldest_locked(srv, 1, NULL);
	} else {
		if (s->site && s->site->nunconf >= SITE_UNCONFIRMED)
			evict_oldest_locked(srv, 0, s->site);
		if (srv->nunconf >= MAX_UNCONFIRMED)
			evict_oldest_locked(srv, 0, NULL);
	}
	do {
		randombytes_buf(&s->ch.id, sizeof(s->ch.id));
	} while (s->ch.id == 0 || sess_lookup_locked(srv, s->ch.id));
	b = s->ch.id % NBUCKETS;
	s->hnext = srv->buckets[b];
	srv->buckets[b] = s;
	s->in_table = 1;
	s->seq = ++srv->next_seq;
	s->refs++;
	srv->nsess++;
	if (s->join) {
		srv->njoin++;
	} else {
		srv->nunconf++;
		if (s->site)
			s->site->nunconf++;
	}
	srv->st.sessions = srv->nsess;
}

/* First authentic message on a session: it now counts as the site's. A
 * session dropped from the table meanwhile (evicted while its message was
 * being opened) stays dropped, and join sessions are never confirmed. */
static void sess_confirm_locked(struct mer_link_server *srv, struct ssess *s)
{
	struct site *st = s->site;

	if (s->confirmed || !s->in_table || s->join)
		return;
	s->confirmed = 1;
	srv->nunconf--;
	if (!st)
		return;
	st->nunconf--;
	if (st->nconf == SITE_SESSIONS)
		sess_remove_locked(srv, st->conf[0]);
	st->conf[st->nconf++] = s;
}

static void reject(struct mer_link_server *srv, int reason)
{
	pthread_mutex_lock(&srv->mu);
	srv->st.rejected[reason]++;
	pthread_mutex_unlock(&srv->mu);
	mer_debug("link message rejected", "reason=%s",
		  mer_chan_reason_name(reason));
}

static nng_msg *notice(int code, int reason)
{
	nng_msg *m;

	if (nng_msg_alloc(&m, MER_CHAN_NOTICE_LEN) != 0)
		return NULL;
	mer_chan_notice_make((uint16_t)code, (uint8_t)reason, nng_msg_body(m));
	return m;
}

static int reason_code(int reason)
{
	switch (reason) {
	case MER_CHAN_R_VERSION:
		return MER_EUNSUPPORTED;
	case MER_CHAN_R_OVERSIZE:
		return MER_ETOOBIG;
	case MER_CHAN_R_UNKNOWN_SESSION:
		return MER_ENOTFOUND;
	case MER_CHAN_R_REPLAY:
	case MER_CHAN_R_OUT_OF_WINDOW:
		return MER_EREPLAY;
	case MER_CHAN_R_AUTH_FAILED:
	case MER_CHAN_R_HANDSHAKE:
		return MER_ECRYPTO;
	case MER_CHAN_R_EXPIRED:
		return MER_EEXPIRED;
	case MER_CHAN_R_REVOKED:
		return MER_EREVOKED;
	case MER_CHAN_R_UNREGISTERED:
		return MER_EAUTH;
	case MER_CHAN_R_BAD_TYPE:
		return MER_EPROTO;
	}
	return MER_EPARSE;
}

/* Seals the reply to the request whose header is req (JSON text, or an
 * ERROR for code != 0). */
static nng_msg *sealed_reply(struct mer_link_server *srv, struct ssess *s,
			     const uint8_t *req, int type, const char *text,
			     int code)
{
	nng_msg *m = NULL;
	char *err = NULL;
	int rv;

	if (code != 0) {
		err = error_text(code, NULL);
		if (!err)
			return notice(MER_ENOMEM, MER_CHAN_R_MALFORMED);
		text = err;
		type = MER_WIRE_ERROR;
	}
	pthread_mutex_lock(&s->mu);
	rv = seal_msg(&s->ch, type, req, text, strlen(text), &m);
	pthread_mutex_unlock(&s->mu);
	free(err);
	if (rv != 0)
		return notice(rv, MER_CHAN_R_MALFORMED);
	pthread_mutex_lock(&srv->mu);
	srv->st.messages_out++;
	pthread_mutex_unlock(&srv->mu);
	return m;
}

static nng_msg *handle_hello(struct mer_link_server *srv, const uint8_t *body,
			     size_t len)
{
	struct mer_chan_hello_info info;
	char site[MER_LINK_NAME_MAX] = "";
	char fp[MER_KEY_FP_SIZE];
	struct ssess *s = NULL;
	nng_msg *m;
	uint64_t gen0;
	int status = 0, reason = -1, rv;

	if (mer_chan_hello_parse(body, len, &info) != 0) {
		reject(srv, MER_CHAN_R_MALFORMED);
		return notice(MER_EPARSE, MER_CHAN_R_MALFORMED);
	}
	mer_key_fingerprint(info.agent_pk, fp);
	/* Revocations from here on may not be seen by check_key below. */
	pthread_mutex_lock(&srv->mu);
	gen0 = srv->revoke_gen;
	pthread_mutex_unlock(&srv->mu);
	if (info.join) {
		if (!srv->ops.join)
			status = MER_EUNSUPPORTED;
	} else {
		rv = srv->ops.check_key(srv->ops.arg, info.agent_pk, site);
		site[sizeof(site) - 1] = '\0';
		if (rv == MER_ENOTFOUND) {
			status = MER_EAUTH;
			reason = MER_CHAN_R_UNREGISTERED;
		} else if (rv == MER_EREVOKED) {
			status = MER_EREVOKED;
			reason = MER_CHAN_R_REVOKED;
		} else if (rv != 0 || site[0] == '\0') {
			status = MER_EBUSY;
		}
	}
	if (status == 0) {
		s = calloc(1, sizeof(*s));
		if (!s || pthread_mutex_init(&s->mu, NULL) != 0) {
			free(s);
			return notice(MER_ENOMEM, MER_CHAN_R_MALFORMED);
		}
		s->join = info.join;
		s->refs = 1; /* ours until inserted */
		s->created_ms = s->last_ms = now_ms();
		pthread_mutex_lock(&srv->mu);
		gc_locked(srv, s->created_ms);
		if (!info.join) {
			s->site = site_get(srv, site);
			if (!s->site) {
				pthread_mutex_unlock(&srv->mu);
				sess_free(s);
				return notice(MER_ENOMEM, MER_CHAN_R_MALFORMED);
			}
		}
		if (s->site && s->site->revoked &&
		    s->site->revoked_gen > gen0) {
			/* Revoked while check_key ran: its answer may be
			 * stale. Refuse; the agent retries and the next
			 * check sees the revocation (or a new key). */
			pthread_mutex_unlock(&srv->mu);
			sess_free(s);
			s = NULL;
			status = MER_EBUSY;
		} else {
			if (s->site && s->site->revoked) {
				/* Revoked before check_key started, which
				 * still says yes: the site joined again with
				 * a new key (the broker makes a revocation
				 * durable before calling revoke). */
				s->site->revoked = 0;
			}
			sess_insert_locked(srv, s);
			pthread_mutex_unlock(&srv->mu);
		}
	}
	if (nng_msg_alloc(&m, MER_CHAN_WELCOME_LEN) != 0) {
		m = NULL;
		goto out;
	}
	if (s)
		pthread_mutex_lock(&s->mu);
	{
		struct mer_chan_session tmp;
		uint64_t id = s ? s->ch.id : 0;
		rv = mer_chan_welcome_make(
		    &srv->key, body, len, (uint16_t)status, id, srv->rekey_s,
		    srv->rekey_msgs, nng_msg_body(m), &tmp);
		if (rv == 0 && s)
			s->ch = tmp;
		mer_chan_session_wipe(&tmp);
	}
	if (s)
		pthread_mutex_unlock(&s->mu);
	if (rv != 0) {
		nng_msg_free(m);
		m = notice(MER_ECRYPTO, MER_CHAN_R_HANDSHAKE);
		reject(srv, MER_CHAN_R_HANDSHAKE);
		if (s) {
			pthread_mutex_lock(&srv->mu);
			sess_remove_locked(srv, s);
			pthread_mutex_unlock(&srv->mu);
		}
		goto out;
	}
	pthread_mutex_lock(&srv->mu);
	if (status == 0)
		srv->st.handshakes++;
	else
		srv->st.handshakes_refused++;
	if (reason >= 0)
		srv->st.rejected[reason]++;
	pthread_mutex_unlock(&srv->mu);
	if (status != 0)
		mer_warn("link handshake refused", "fingerprint=%s error=%s",
			 fp, mer_errname(status));
	else
		mer_debug("link session opened",
			  "site=%s fingerprint=%s join=%d",
			  info.join ? "(join)" : site, fp, info.join);
out:
	sess_unref(srv, s);
	return m;
}

static nng_msg *handle_report(struct mer_link_server *srv, struct ssess *s,
			      const uint8_t *req, json_t *obj)
{
	int rv = srv->ops.report(srv->ops.arg, s->site->name, obj);

	if (rv == 0) {
		pthread_mutex_lock(&srv->mu);
		srv->st.reports++;
		pthread_mutex_unlock(&srv->mu);
	}
	return sealed_reply(srv, s, req, MER_WIRE_ACK, "{}", rv);
}

static nng_msg *handle_join(struct mer_link_server *srv, struct ssess *s,
			    const uint8_t *req, json_t *obj)
{
	char site[MER_LINK_NAME_MAX] = "", region[MER_LINK_NAME_MAX] = "";
	char redacted[96], fp[MER_KEY_FP_SIZE];
	json_t *tok = json_object_get(obj, "token");
	nng_msg *m;
	char *text = NULL;
	int rv;

	if (!json_is_string(tok)) {
		rv = MER_EPARSE;
		snprintf(redacted, sizeof(redacted), "[none]");
	} else {
		mer_redact_token(json_string_value(tok), redacted,
				 sizeof(redacted));
		rv = srv->ops.join(srv->ops.arg, json_string_value(tok),
				   s->ch.peer_pk, site, region);
		/* jansson frees without wiping: clear the secret in place.
		 * Copies made while parsing (jansson's lexer buffer, freed
		 * unwiped) are out of our reach; the plaintext buffer itself
		 * is wiped by handle(). */
		sodium_memzero((char *)json_string_value(tok),
			       json_string_length(tok));
	}
	mer_key_fingerprint(s->ch.peer_pk, fp);
	if (rv == 0) {
		json_t *o =
		    json_pack("{s:s, s:s}", "site", site, "region", region);
		text = o ? json_dumps(o, JSON_COMPACT) : NULL;
		json_decref(o);
		if (!text)
			rv = MER_ENOMEM;
	}
	pthread_mutex_lock(&srv->mu);
	if (rv == 0)
		srv->st.joins++;
	else
		srv->st.joins_refused++;
	pthread_mutex_unlock(&srv->mu);
	if (rv == 0)
		mer_info("site joined",
			 "site=%s region=%s fingerprint=%s "
			 "token_id=%s",
			 site, region, fp, redacted);
	else
		mer_warn("join refused", "fingerprint=%s token_id=%s error=%s",
			 fp, redacted, mer_errname(rv));
	m = sealed_reply(srv, s, req, MER_WIRE_ACK, text ? text : "{}", rv);
	free(text);
	return m;
}

/* {"commands": [...]} with every command still queued for the site. */
static char *commands_text_locked(struct mer_link_server *srv, struct site *st)
{
	json_t *arr = json_array(), *o;
	char *text;
	size_t n = 0;

	for (struct cmd *c = st->cmds; c && arr; c = c->next, n++)
		json_array_append(arr, c->obj);
	o = json_pack("{s:o}", "commands", arr);
	text = o ? json_dumps(o, JSON_COMPACT) : NULL;
	json_decref(o);
	srv->st.polls++;
	srv->st.commands += n;
	return text;
}

static void ack_commands_locked(struct site *st, json_t *acks)
{
	size_t i;
	json_t *v;

	json_array_foreach(acks, i, v)
	{
		const char *id = json_string_value(v);
		struct cmd **pp = &st->cmds;
		if (!id)
			continue;
		while (*pp) {
			if (strcmp((*pp)->id, id) == 0) {
				struct cmd *c = *pp;
				*pp = c->next;
				c->next = NULL;
				cmds_free(c);
				break;
			}
			pp = &(*pp)->next;
		}
	}
}

static int spawn_worker(struct mer_link_server *srv, int start_recv);

/* Returns a reply now, or NULL when the poll is held (w then owns s). */
static nng_msg *handle_poll(struct worker *w, struct ssess *s,
			    const uint8_t *req, json_t *obj, int *held)
{
	struct mer_link_server *srv = w->srv;
	struct site *st = s->site;
	json_t *wait = json_object_get(obj, "wait_ms");
	struct worker *old = NULL, *w2 = NULL;
	int wait_ms = DEFAULT_POLL_WAIT_MS, need_new = 0, cancel = 0;
	char *text;
	nng_msg *m;

	*held = 0;
	if (json_is_integer(wait)) {
		json_int_t v = json_integer_value(wait);
		wait_ms = v < 0			 ? 0
			  : v > srv->poll_max_ms ? srv->poll_max_ms
						 : (int)v;
	}
	if (srv->ops.poll)
		srv->ops.poll(srv->ops.arg, st->name);
	pthread_mutex_lock(&srv->mu);
	if (json_is_array(json_object_get(obj, "ack")))
		ack_commands_locked(st, json_object_get(obj, "ack"));
	if (st->cmds || wait_ms == 0 || srv->parked >= srv->max_parked ||
	    srv->stopping) {
		text = commands_text_locked(srv, st);
		pthread_mutex_unlock(&srv->mu);
		m = sealed_reply(srv, s, req, MER_WIRE_COMMANDS,
				 text ? text : "{\"commands\":[]}", 0);
		free(text);
		return m;
	}
	if (st->parked) {
		old = st->parked;
		old->wake = 1;
	}
	st->parked = w;
	w->state = W_PARKED;
	w->sess = s;
	w->site = st;
	w->wake = 0;
	w->wait_ms = wait_ms;
	memcpy(w->req, req, MER_WIRE_HDR_LEN);
	srv->parked++;
	if (w->in_pool) {
		w->in_pool = 0;
		srv->pool--;
	}
	if (srv->pool < srv->receivers) {
		srv->pool++;
		if (srv->spare) {
			w2 = srv->spare;
			srv->spare = w2->next_spare;
			w2->in_pool = 1;
			w2->state = W_RECV;
		} else {
			need_new = 1;
		}
	}
	pthread_mutex_unlock(&srv->mu);
	*held = 1;

	if (old)
		nng_aio_cancel(old->timer);
	nng_sleep_aio(wait_ms, w->timer);
	/* A command queued between our unlock and the sleep could not cancel
	 * a sleep that had not started: look again. */
	pthread_mutex_lock(&srv->mu);
	cancel = w->state == W_PARKED && (w->wake || st->cmds || st->revoked);
	pthread_mutex_unlock(&srv->mu);
	if (cancel)
		nng_aio_cancel(w->timer);
	if (w2)
		nng_ctx_recv(w2->ctx, w2->aio);
	if (need_new && spawn_worker(srv, 1) != 0) {
		pthread_mutex_lock(&srv->mu);
		srv->pool--;
		pthread_mutex_unlock(&srv->mu);
	}
	return NULL;
}

/* Handles one request; returns the reply, or NULL with *held set when a
 * long-poll is held (w then belongs to its timer: do not touch it). */
static nng_msg *handle(struct worker *w, nng_msg *req, int *held_out)
{
	struct mer_link_server *srv = w->srv;
	const uint8_t *body = nng_msg_body(req);
	size_t len = nng_msg_len(req);
	struct mer_wire_hdr h;
	struct ssess *s;
	uint8_t *pt = NULL;
	size_t ptlen = 0, ptcap = 0;
	uint64_t messages;
	json_t *obj = NULL;
	nng_msg *m = NULL;
	int rv, type = 0, reason = 0, revoked, expired, held = 0;
	int64_t now = now_ms();

	*held_out = 0;
	if (len > srv->max_msg) {
		reject(srv, MER_CHAN_R_OVERSIZE);
		return notice(MER_ETOOBIG, MER_CHAN_R_OVERSIZE);
	}
	rv = mer_wire_hdr_decode(body, len, &h);
	if (rv != 0) {
		reason = rv == MER_EUNSUPPORTED ? MER_CHAN_R_VERSION
						: MER_CHAN_R_MALFORMED;
		reject(srv, reason);
		return notice(reason_code(reason), reason);
	}
	if (h.type == MER_WIRE_HELLO)
		return handle_hello(srv, body, len);
	if (h.type != MER_WIRE_REPORT && h.type != MER_WIRE_POLL &&
	    h.type != MER_WIRE_JOIN) {
		reject(srv, MER_CHAN_R_BAD_TYPE);
		return notice(MER_EPROTO, MER_CHAN_R_BAD_TYPE);
	}
	pthread_mutex_lock(&srv->mu);
	gc_locked(srv, now);
	s = sess_lookup_locked(srv, h.session);
	if (s)
		s->refs++;
	pthread_mutex_unlock(&srv->mu);
	if (!s) {
		reject(srv, len < MER_WIRE_OVERHEAD
				? MER_CHAN_R_TRUNCATED
				: MER_CHAN_R_UNKNOWN_SESSION);
		return notice(MER_ENOTFOUND, MER_CHAN_R_UNKNOWN_SESSION);
	}
	ptcap = len > MER_WIRE_OVERHEAD ? len - MER_WIRE_OVERHEAD : 1;
	pt = malloc(ptcap);
	if (!pt) {
		m = notice(MER_ENOMEM, MER_CHAN_R_MALFORMED);
		goto out;
	}
	pthread_mutex_lock(&s->mu);
	rv =
	    mer_chan_open(&s->ch, body, len, &type, pt,
			  len > MER_WIRE_OVERHEAD ? len - MER_WIRE_OVERHEAD : 0,
			  &ptlen, &reason);
	messages = s->ch.messages;
	pthread_mutex_unlock(&s->mu);
	if (rv != 0) {
		reject(srv, reason);
		m = notice(reason_code(reason), reason);
		goto out;
	}
	pthread_mutex_lock(&srv->mu);
	if (!s->in_table) {
		/* Dropped (evicted, expired, or a join session already used)
		 * while we were opening: as if it had never existed. */
		pthread_mutex_unlock(&srv->mu);
		reject(srv, MER_CHAN_R_UNKNOWN_SESSION);
		m = notice(MER_ENOTFOUND, MER_CHAN_R_UNKNOWN_SESSION);
		goto out;
	}
	srv->st.messages_in++;
	if (s->join) /* single use: whatever the message is (§4) */
		sess_remove_locked(srv, s);
	revoked = s->revoked || (s->site && s->site->revoked);
	expired = sess_expired(srv, s, now, messages);
	if (!revoked && !expired) {
		sess_confirm_locked(srv, s);
		s->last_ms = now;
	}
	if (expired && !revoked)
		sess_remove_locked(srv, s);
	pthread_mutex_unlock(&srv->mu);
	if (revoked || expired) {
		reason = revoked ? MER_CHAN_R_REVOKED : MER_CHAN_R_EXPIRED;
		reject(srv, reason);
		m = sealed_reply(srv, s, body, 0, NULL, reason_code(reason));
		goto out;
	}
	if ((s->join && type != MER_WIRE_JOIN) ||
	    (!s->join && type == MER_WIRE_JOIN)) {
		reject(srv, MER_CHAN_R_BAD_TYPE);
		m = sealed_reply(srv, s, body, 0, NULL, MER_EPROTO);
		goto out;
	}
	obj = parse_object(pt, ptlen);
	sodium_memzero(pt, ptlen);
	if (!obj) {
		reject(srv, MER_CHAN_R_BAD_PAYLOAD);
		m = sealed_reply(srv, s, body, 0, NULL, MER_EPARSE);
		goto out;
	}
	switch (type) {
	case MER_WIRE_REPORT:
		m = handle_report(srv, s, body, obj);
		break;
	case MER_WIRE_JOIN:
		m = handle_join(srv, s, body, obj);
		break;
	case MER_WIRE_POLL:
		m = handle_poll(w, s, body, obj, &held);
		break;
	}
out:
	json_decref(obj);
	/* Every path, including refusals before parsing: a JOIN's plaintext
	 * holds the token secret. */
	if (pt)
		sodium_memzero(pt, ptcap);
	free(pt);
	if (held)
		*held_out = 1;
	else
		sess_unref(srv, s);
	return m;
}

static void worker_recv(struct worker *w)
{
	nng_ctx_recv(w->ctx, w->aio);
}

static void worker_cb(void *arg)
{
	struct worker *w = arg;
	struct mer_link_server *srv = w->srv;
	nng_msg *req, *rep;
	int rv = nng_aio_result(w->aio), stopping, again, held = 0;

	pthread_mutex_lock(&srv->mu);
	stopping = srv->stopping;
	pthread_mutex_unlock(&srv->mu);

	if (w->state == W_SEND) {
		if (rv != 0 && nng_aio_get_msg(w->aio))
			nng_msg_free(nng_aio_get_msg(w->aio));
		nng_aio_set_msg(w->aio, NULL);
		if (stopping)
			return;
		pthread_mutex_lock(&srv->mu);
		again = 1;
		if (!w->in_pool) {
			if (srv->pool < srv->receivers) {
				w->in_pool = 1;
				srv->pool++;
			} else {
				again = 0;
				w->state = W_SPARE;
				w->next_spare = srv->spare;
				srv->spare = w;
			}
		}
		if (again)
			w->state = W_RECV;
		pthread_mutex_unlock(&srv->mu);
		if (again)
			worker_recv(w);
		return;
	}
	/* W_RECV */
	if (rv != 0) {
		if (rv == NNG_ECLOSED || stopping)
			return;
		worker_recv(w);
		return;
	}
	req = nng_aio_get_msg(w->aio);
	nng_aio_set_msg(w->aio, NULL);
	if (stopping) {
		nng_msg_free(req);
		return;
	}
	rep = handle(w, req, &held);
	nng_msg_free(req);
	if (held)
		return;
	if (!rep) { /* out of memory: nothing sensible to send */
		worker_recv(w);
		return;
	}
	w->state = W_SEND;
	nng_aio_set_msg(w->aio, rep);
	nng_ctx_send(w->ctx, w->aio);
}

static void timer_cb(void *arg)
{
	struct worker *w = arg;
	struct mer_link_server *srv = w->srv;
	struct ssess *s;
	char *text = NULL;
	nng_msg *m;
	int revoked;

	pthread_mutex_lock(&srv->mu);
	s = w->sess;
	w->sess = NULL;
	if (srv->stopping || w->state != W_PARKED) {
		sess_unref_locked(s);
		pthread_mutex_unlock(&srv->mu);
		return;
	}
	if (w->site->parked == w)
		w->site->parked = NULL;
	srv->parked--;
	revoked = s->revoked || w->site->revoked;
	if (!revoked)
		text = commands_text_locked(srv, w->site);
	w->state = W_SEND;
	w->site = NULL;
	pthread_mutex_unlock(&srv->mu);

	if (revoked)
		m = sealed_reply(srv, s, w->req, 0, NULL, MER_EREVOKED);
	else
		m = sealed_reply(srv, s, w->req, MER_WIRE_COMMANDS,
				 text ? text : "{\"commands\":[]}", 0);
	free(text);
	sess_unref(srv, s);
	if (!m) {
		/* Nothing to send: go back to receiving via the send path. */
		nng_aio_set_msg(w->aio, NULL);
		pthread_mutex_lock(&srv->mu);
		w->state = W_SPARE;
		w->next_spare = srv->spare;
		srv->spare = w;
		pthread_mutex_unlock(&srv->mu);
		return;
	}
	nng_aio_set_msg(w->aio, m);
	nng_ctx_send(w->ctx, w->aio);
}

static int spawn_worker(struct mer_link_server *srv, int start_recv)
{
	struct worker *w = calloc(1, sizeof(*w));

	if (!w)
		return MER_ENOMEM;
	w->srv = srv;
	if (nng_aio_alloc(&w->aio, worker_cb, w) != 0 ||
	    nng_aio_alloc(&w->timer, timer_cb, w) != 0 ||
	    nng_ctx_open(&w->ctx, srv->sock) != 0) {
		nng_aio_free(w->aio);
		nng_aio_free(w->timer);
		free(w);
		return MER_EIO;
	}
	w->state = W_RECV;
	w->in_pool = 1;
	pthread_mutex_lock(&srv->mu);
	w->next_all = srv->workers;
	srv->workers = w;
	pthread_mutex_unlock(&srv->mu);
	if (start_recv)
		worker_recv(w);
	return 0;
}

static int fill_url(struct mer_link_server *srv, const char *url)
{
	int port = 0;

	snprintf(srv->url, sizeof(srv->url), "%s", url);
	if (strncmp(url, "tcp://", 6) != 0)
		return 0;
	if (nng_listener_get_int(srv->listener, NNG_OPT_TCP_BOUND_PORT,
				 &port) != 0)
		return 0;
	const char *colon = strrchr(url, ':');
	if (colon && colon > url + 5)
		snprintf(srv->url, sizeof(srv->url), "%.*s:%d",
			 (int)(colon - url), url, port);
	return 0;
}

int mer_link_server_start(const struct mer_link_server_opts *opts,
			  const struct mer_link_server_ops *ops,
			  struct mer_link_server **out)
{
	struct mer_link_server *srv;
	int rv;

	*out = NULL;
	if (!opts || !opts->url || !opts->key || !ops || !ops->check_key ||
	    !ops->report ||
	    (opts->max_payload &&
	     opts->max_payload > MER_WIRE_LIMIT_MAX_PAYLOAD))
		return MER_EINVAL;
	if (sodium_init() < 0)
		return MER_ECRYPTO;
	srv = calloc(1, sizeof(*srv));
	if (!srv)
		return MER_ENOMEM;
	srv->key = *opts->key;
	srv->ops = *ops;
	srv->max_payload = opts->max_payload ? opts->max_payload
					     : MER_WIRE_DEFAULT_MAX_PAYLOAD;
	srv->max_msg = srv->max_payload + MER_WIRE_OVERHEAD;
	srv->rekey_s = opts->rekey_after_s ? opts->rekey_after_s
					   : MER_CHAN_DEFAULT_REKEY_S;
	srv->rekey_msgs = opts->rekey_after_msgs ? opts->rekey_after_msgs
						 : MER_CHAN_DEFAULT_REKEY_MSGS;
	srv->poll_max_ms =
	    opts->poll_max_ms > 0 ? opts->poll_max_ms : DEFAULT_POLL_MAX_MS;
	srv->idle_ms =
	    opts->idle_timeout_ms > 0 ? opts->idle_timeout_ms : DEFAULT_IDLE_MS;
	srv->receivers =
	    opts->receivers > 0 ? opts->receivers : DEFAULT_RECEIVERS;
	srv->max_parked =
	    opts->max_parked > 0 ? opts->max_parked : DEFAULT_MAX_PARKED;
	srv->last_gc = now_ms();
	if (pthread_mutex_init(&srv->mu, NULL) != 0) {
		free(srv);
		return MER_ENOMEM;
	}
	rv = nng_rep0_open(&srv->sock);
	if (rv != 0) {
		pthread_mutex_destroy(&srv->mu);
		mer_keypair_wipe(&srv->key);
		free(srv);
		return from_nng(rv);
	}
	/* Twice the largest legal message: nng drops bigger ones by closing
	 * the connection; those in between are counted as oversize. */
	nng_socket_set_size(srv->sock, NNG_OPT_RECVMAXSZ, 2 * srv->max_msg);
	rv = nng_listener_create(&srv->listener, srv->sock, opts->url);
	if (rv == 0)
		rv = nng_listener_set_size(srv->listener, NNG_OPT_RECVMAXSZ,
					   2 * srv->max_msg);
	if (rv == 0)
		rv = nng_listener_start(srv->listener, 0);
	if (rv != 0) {
		mer_error("link listen failed", "url=%s error=%s", opts->url,
			  nng_strerror(rv));
		mer_link_server_stop(srv);
		return MER_EIO;
	}
	fill_url(srv, opts->url);
	for (int i = 0; i < srv->receivers; i++) {
		if (spawn_worker(srv, 0) != 0) {
			mer_link_server_stop(srv);
			return MER_ENOMEM;
		}
		srv->pool++;
	}
	for (struct worker *w = srv->workers; w; w = w->next_all)
		worker_recv(w);
	mer_info("link listening", "url=%s max_payload=%zu", srv->url,
		 srv->max_payload);
	*out = srv;
	return 0;
}

const char *mer_link_server_url(const struct mer_link_server *srv)
{
	return srv->url;
}

void mer_link_server_stop(struct mer_link_server *srv)
{
	struct worker *w, *wn;

	if (!srv)
		return;
	pthread_mutex_lock(&srv->mu);
	srv->stopping = 1;
	pthread_mutex_unlock(&srv->mu);
	nng_close(srv->sock);
	for (w = srv->workers; w; w = w->next_all)
		nng_aio_stop(w->timer);
	for (w = srv->workers; w; w = w->next_all)
		nng_aio_stop(w->aio);
	for (w = srv->workers; w; w = wn) {
		wn = w->next_all;
		if (nng_aio_get_msg(w->aio))
			nng_msg_free(nng_aio_get_msg(w->aio));
		nng_aio_free(w->aio);
		nng_aio_free(w->timer);
		if (w->sess)
			sess_unref_locked(w->sess);
		free(w);
	}
	for (size_t b = 0; b < NBUCKETS; b++)
		while (srv->buckets[b])
			sess_remove_locked(srv, srv->buckets[b]);
	while (srv->sites) {
		struct site *n = srv->sites->next;
		cmds_free(srv->sites->cmds);
		free(srv->sites);
		srv->sites = n;
	}
	pthread_mutex_destroy(&srv->mu);
	mer_keypair_wipe(&srv->key);
	free(srv);
}

int mer_link_server_queue_command(struct mer_link_server *srv, const char *site,
				  json_t *cmd)
{
	json_t *idv = json_object_get(cmd, "id");
	const char *id = json_string_value(idv);
	struct worker *w = NULL;
	struct site *st;
	struct cmd *c, **pp;

	if (!site || !*site || !json_is_object(cmd) || !id || !*id ||
	    strlen(id) >= CMD_ID_MAX)
		return MER_EINVAL;
	c = calloc(1, sizeof(*c));
	if (!c)
		return MER_ENOMEM;
	pthread_mutex_lock(&srv->mu);
	st = site_get(srv, site);
	if (!st) {
		pthread_mutex_unlock(&srv->mu);
		free(c);
		return MER_ENOMEM;
	}
	for (pp = &st->cmds; *pp; pp = &(*pp)->next) {
		if (strcmp((*pp)->id, id) == 0) {
			pthread_mutex_unlock(&srv->mu);
			free(c);
			return MER_EEXIST;
		}
	}
	c->obj = json_incref(cmd);
	c->id = id;
	*pp = c;
	if (st->parked) {
		w = st->parked;
		w->wake = 1;
	}
	pthread_mutex_unlock(&srv->mu);
	/* If w was answered meanwhile and now holds another site's poll,
	 * that poll is answered early with what it has: harmless. */
	if (w)
		nng_aio_cancel(w->timer);
	return 0;
}

size_t mer_link_server_pending(struct mer_link_server *srv, const char *site)
{
	size_t n = 0;

	pthread_mutex_lock(&srv->mu);
	struct site *st = site_find(srv, site);
	for (struct cmd *c = st ? st->cmds : NULL; c; c = c->next)
		n++;
	pthread_mutex_unlock(&srv->mu);
	return n;
}

static int cmp_names(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

int mer_link_server_sites(struct mer_link_server *srv, char ***names, size_t *n)
{
	size_t cap = 0, k = 0;
	char **out = NULL;
	int64_t now = now_ms();
	int rv = 0;

	pthread_mutex_lock(&srv->mu);
	for (struct site *st = srv->sites; st; st = st->next) {
		int live = 0;
		if (st->revoked)
			continue;
		for (int i = 0; i < st->nconf; i++)
			if (!st->conf[i]->revoked &&
			    now - st->conf[i]->last_ms <= srv->idle_ms)
				live = 1;
		if (!live)
			continue;
		if (k == cap) {
			size_t nc = cap ? cap * 2 : 8;
			char **t = realloc(out, nc * sizeof(*t));
			if (!t) {
				rv = MER_ENOMEM;
				break;
			}
			out = t;
			cap = nc;
		}
		out[k] = strdup(st->name);
		if (!out[k]) {
			rv = MER_ENOMEM;
			break;
		}
		k++;
	}
	pthread_mutex_unlock(&srv->mu);
	if (rv != 0) {
		mer_link_names_free(out, k);
		*names = NULL;
		*n = 0;
		return rv;
	}
	if (k)
		qsort(out, k, sizeof(*out), cmp_names);
	*names = out;
	*n = k;
	return 0;
}

void mer_link_names_free(char **names, size_t n)
{
	for (size_t i = 0; names && i < n; i++)
		free(names[i]);
	free(names);
}

int mer_link_server_revoke(struct mer_link_server *srv, const char *site)
{
	struct worker *w = NULL;
	struct site *st;

	pthread_mutex_lock(&srv->mu);
	st = site_get(srv, site);
	if (!st) {
		pthread_mutex_unlock(&srv->mu);
		return MER_ENOMEM;
	}
	st->revoked = 1;
	st->revoked_gen = ++srv->revoke_gen;
	cmds_free(st->cmds);
	st->cmds = NULL;
	for (size_t b = 0; b < NBUCKETS; b++)
		for (struct ssess *s = srv->buckets[b]; s; s = s->hnext)
			if (s->site == st)
				s->revoked = 1;
	if (st->parked) {
		w = st->parked;
		w->wake = 1;
	}
	pthread_mutex_unlock(&srv->mu);
	if (w)
		nng_aio_cancel(w->timer);
	mer_info("site revoked on link", "site=%s", site);
	return 0;
}

void mer_link_server_get_stats(struct mer_link_server *srv,
			       struct mer_link_stats *out)
{
	pthread_mutex_lock(&srv->mu);
	*out = srv->st;
	out->sessions = srv->nsess;
	pthread_mutex_unlock(&srv->mu);
}

/* ============================== client ============================== */

struct csess {
	struct mer_chan_session ch;
	pthread_mutex_t mu; /* over ch */
	int refs;	    /* under c->mu */
	int64_t created_ms;
};

/* A reusable REQ context and its aio (one exchange at a time). */
struct xchg {
	nng_ctx ctx;
	nng_aio *aio;
	struct xchg *next;
};

struct obox {
	json_t *report;
	struct obox *next;
};

struct mer_link_client {
	nng_socket sock;
	struct mer_keypair key;
	char url[256];
	char fp[MER_KEY_FP_SIZE + 8];
	size_t max_payload;
	size_t max_msg;
	int timeout_ms;
	int outbox_max;
	int retry_min_ms;
	int retry_max_ms;

	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct csess *cur;
	int handshaking;
	int revoked;
	int closing;
	int active;   /* public calls in flight (client_enter) */
	json_t *acks; /* ids to acknowledge with the next poll */
	struct xchg *free_x;
	struct obox *head;
	struct obox *tail;
	size_t queued;
	pthread_t sender;
	int sender_started;
	struct mer_link_stats st;
};

static void csess_unref(struct mer_link_client *c, struct csess *s)
{
	int last;

	if (!s)
		return;
	pthread_mutex_lock(&c->mu);
	last = --s->refs == 0;
	pthread_mutex_unlock(&c->mu);
	if (last) {
		pthread_mutex_destroy(&s->mu);
		mer_chan_session_wipe(&s->ch);
		free(s);
	}
}

static void client_reject(struct mer_link_client *c, int reason)
{
	pthread_mutex_lock(&c->mu);
	c->st.rejected[reason]++;
	pthread_mutex_unlock(&c->mu);
	mer_debug("link reply rejected", "reason=%s",
		  mer_chan_reason_name(reason));
}

static struct xchg *xchg_get(struct mer_link_client *c)
{
	struct xchg *x;

	pthread_mutex_lock(&c->mu);
	x = c->free_x;
	if (x)
		c->free_x = x->next;
	pthread_mutex_unlock(&c->mu);
	if (x)
		return x;
	x = calloc(1, sizeof(*x));
	if (!x)
		return NULL;
	if (nng_aio_alloc(&x->aio, NULL, NULL) != 0 ||
	    nng_ctx_open(&x->ctx, c->sock) != 0) {
		nng_aio_free(x->aio);
		free(x);
		return NULL;
	}
	/* The socket's setting is inherited, but say it on the context too:
	 * a resent sealed message is a replay (PROTOCOL.md §1). */
	nng_ctx_set_ms(x->ctx, NNG_OPT_REQ_RESENDTIME, NNG_DURATION_INFINITE);
	return x;
}

static void xchg_put(struct mer_link_client *c, struct xchg *x)
{
	pthread_mutex_lock(&c->mu);
	x->next = c->free_x;
	c->free_x = x;
	pthread_mutex_unlock(&c->mu);
}

/* One request and its reply. Takes req in all cases. */
static int exchange(struct mer_link_client *c, nng_msg *req, int timeout_ms,
		    nng_msg **rep)
{
	struct xchg *x = xchg_get(c);
	int64_t deadline = now_ms() + timeout_ms, left;
	int rv;

	*rep = NULL;
	if (!x) {
		nng_msg_free(req);
		pthread_mutex_lock(&c->mu);
		rv = c->closing ? MER_ECLOSED : MER_ENOMEM;
		pthread_mutex_unlock(&c->mu);
		return rv;
	}
	nng_aio_set_timeout(x->aio, timeout_ms);
	nng_aio_set_msg(x->aio, req);
	nng_ctx_send(x->ctx, x->aio);
	nng_aio_wait(x->aio);
	rv = nng_aio_result(x->aio);
	if (rv != 0) {
		nng_msg_free(req);
		goto out;
	}
	left = deadline - now_ms();
	nng_aio_set_timeout(x->aio, left > 1 ? (nng_duration)left : 1);
	nng_ctx_recv(x->ctx, x->aio);
	nng_aio_wait(x->aio);
	rv = nng_aio_result(x->aio);
	if (rv == 0)
		*rep = nng_aio_get_msg(x->aio);
out:
	nng_aio_set_msg(x->aio, NULL);
	xchg_put(c, x);
	return from_nng(rv);
}

/* HELLO/WELCOME. On success *out holds one reference for the caller.
 * *final as for call(): set for a refusal authenticated by the WELCOME. */
static int handshake(struct mer_link_client *c, int join, struct csess **out,
		     int *final)
{
	struct mer_chan_hello hs;
	struct csess *s = NULL;
	nng_msg *m, *rep = NULL;
	int rv, status = 0, reason = MER_CHAN_R_MALFORMED;
	uint16_t code;
	uint8_t nreason;

	*out = NULL;
	*final = 0;
	rv = mer_chan_hello_make(&hs, &c->key, join);
	if (rv != 0)
		return rv;
	if (nng_msg_alloc(&m, MER_CHAN_HELLO_LEN) != 0) {
		rv = MER_ENOMEM;
		goto out;
	}
	memcpy(nng_msg_body(m), hs.msg, MER_CHAN_HELLO_LEN);
	rv = exchange(c, m, c->timeout_ms, &rep);
	if (rv != 0)
		goto out;
	if (mer_chan_notice_parse(nng_msg_body(rep), nng_msg_len(rep), &code,
				  &nreason) == 0) {
		/* Unauthenticated: transient whatever it says (§8). */
		mer_debug("link notice from broker", "url=%s code=%s", c->url,
			  mer_errname(code));
		rv = MER_EBUSY;
		goto out;
	}
	s = calloc(1, sizeof(*s));
	if (!s || pthread_mutex_init(&s->mu, NULL) != 0) {
		free(s);
		s = NULL;
		rv = MER_ENOMEM;
		goto out;
	}
	rv = mer_chan_hello_finish(&hs, nng_msg_body(rep), nng_msg_len(rep),
				   c->fp, &s->ch, &status, &reason);
	if (rv != 0) {
		client_reject(c, reason);
		if (reason == MER_CHAN_R_BROKER_KEY)
			mer_error("broker key does not match the pinned "
				  "fingerprint",
				  "url=%s pinned=%s", c->url, c->fp);
		goto out_free;
	}
	if (status != 0) {
		rv = status;
		*final = 1;
		pthread_mutex_lock(&c->mu);
		c->st.handshakes_refused++;
		if (status == MER_EREVOKED && !join)
			c->revoked = 1;
		pthread_mutex_unlock(&c->mu);
		mer_warn("broker refused the session", "url=%s error=%s",
			 c->url, mer_errname(status));
		goto out_free;
	}
	s->refs = 1;
	s->created_ms = now_ms();
	pthread_mutex_lock(&c->mu);
	c->st.handshakes++;
	pthread_mutex_unlock(&c->mu);
	*out = s;
	s = NULL;
	goto out;

out_free:
	if (s) {
		pthread_mutex_destroy(&s->mu);
		mer_chan_session_wipe(&s->ch);
		free(s);
	}
out:
	if (rep)
		nng_msg_free(rep);
	mer_chan_hello_wipe(&hs);
	return rv;
}

static int needs_rekey(struct csess *s)
{
	int r;

	pthread_mutex_lock(&s->mu);
	r = (s->ch.rekey_after_msgs &&
	     s->ch.messages >= s->ch.rekey_after_msgs) ||
	    (s->ch.rekey_after_s &&
	     now_ms() - s->created_ms >= (int64_t)s->ch.rekey_after_s * 1000);
	pthread_mutex_unlock(&s->mu);
	return r;
}

/* The current session (handshaking, or re-keying, first when needed). */
static int get_session(struct mer_link_client *c, struct csess **out,
		       int *final)
{
	struct csess *s, *old;
	int rv;

	pthread_mutex_lock(&c->mu);
	for (;;) {
		if (c->closing) {
			rv = MER_ECLOSED;
			goto out_unlock;
		}
		if (c->revoked) {
			rv = MER_EREVOKED;
			goto out_unlock;
		}
		if (c->cur && !c->handshaking) {
			s = c->cur;
			s->refs++;
			pthread_mutex_unlock(&c->mu);
			if (!needs_rekey(s)) {
				*out = s;
				return 0;
			}
			csess_unref(c, s);
			pthread_mutex_lock(&c->mu);
			if (c->cur != s || c->handshaking)
				continue;
		}
		if (!c->handshaking)
			break;
		pthread_cond_wait(&c->cv, &c->mu);
	}
	c->handshaking = 1;
	pthread_mutex_unlock(&c->mu);

	rv = handshake(c, 0, &s, final);

	pthread_mutex_lock(&c->mu);
	c->handshaking = 0;
	pthread_cond_broadcast(&c->cv);
	if (rv != 0)
		goto out_unlock;
	old = c->cur;
	c->cur = s;
	s->refs++; /* the client's */
	pthread_mutex_unlock(&c->mu);
	/* Exchanges in flight on the old session keep their references. */
	csess_unref(c, old);
	*out = s;
	return 0;

out_unlock:
	pthread_mutex_unlock(&c->mu);
	return rv;
}

static void invalidate(struct mer_link_client *c, struct csess *s)
{
	int drop = 0;

	pthread_mutex_lock(&c->mu);
	if (c->cur == s) {
		c->cur = NULL;
		drop = 1;
	}
	pthread_mutex_unlock(&c->mu);
	if (drop)
		csess_unref(c, s);
}

/*
 * One sealed request. fixed: a join session to use instead of the current
 * one (no retries then). Handshakes again after "unknown session" or
 * "expired" and retries once with a new counter.
 *
 * *final says whether rv may be believed as the last word on this request:
 * set only for a local refusal (payload too big) and for a code the broker
 * sent in a sealed, authenticated reply (ERROR, or a refused handshake).
 * Everything an on-path attacker can produce (NOTICE, garbage, a reply
 * that does not open, a timeout) leaves it 0: the caller may retry.
 */
static int call(struct mer_link_client *c, struct csess *fixed, int type,
		const char *text, size_t len, int timeout_ms, int *rtype,
		json_t **reply, int *final)
{
	int rv = MER_EPROTO;

	*reply = NULL;
	*final = 0;
	if (len > c->max_payload) {
		*final = 1;
		return MER_ETOOBIG;
	}
	for (int attempt = 0; attempt < 3; attempt++) {
		struct csess *s;
		nng_msg *m = NULL, *rep = NULL;
		struct mer_wire_hdr h;
		uint8_t *pt = NULL, req[MER_WIRE_HDR_LEN];
		size_t ptlen = 0, ptcap = 0;
		int retry = 0, reason = 0, t = 0;
		uint16_t code;
		uint8_t nreason;
		json_t *obj = NULL;

		if (fixed) {
			pthread_mutex_lock(&c->mu);
			fixed->refs++;
			pthread_mutex_unlock(&c->mu);
			s = fixed;
		} else {
			rv = get_session(c, &s, final);
			if (rv != 0)
				return rv;
		}
		pthread_mutex_lock(&s->mu);
		rv = seal_msg(&s->ch, type, NULL, text, len, &m);
		pthread_mutex_unlock(&s->mu);
		if (rv == MER_EEXPIRED && !fixed) {
			invalidate(c, s);
			csess_unref(c, s);
			continue;
		}
		if (rv != 0) {
			csess_unref(c, s);
			return rv;
		}
		/* The reply must be bound to exactly this request (§5). */
		memcpy(req, nng_msg_body(m), MER_WIRE_HDR_LEN);
		pthread_mutex_lock(&c->mu);
		c->st.messages_out++;
		pthread_mutex_unlock(&c->mu);
		rv = exchange(c, m, timeout_ms, &rep);
		if (rv != 0)
			goto next;
		if (nng_msg_len(rep) > c->max_msg) {
			client_reject(c, MER_CHAN_R_OVERSIZE);
			rv = MER_EPROTO;
			goto next;
		}
		if (mer_chan_notice_parse(nng_msg_body(rep), nng_msg_len(rep),
					  &code, &nreason) == 0) {
			/* Unauthenticated: the only thing we do on its word
			 * is handshake again (PROTOCOL.md §8). Its code is
			 * never passed up (it could say "revoked"): the
			 * caller gets a transient MER_EBUSY. */
			rv = MER_EBUSY;
			mer_debug("link notice from broker", "url=%s code=%s",
				  c->url, mer_errname(code));
			if (code == MER_ENOTFOUND ||
			    nreason == MER_CHAN_R_UNKNOWN_SESSION) {
				invalidate(c, s);
				retry = !fixed;
				mer_debug("link session unknown to broker",
					  "url=%s", c->url);
			}
			goto next;
		}
		if (mer_wire_hdr_decode(nng_msg_body(rep), nng_msg_len(rep),
					&h) != 0) {
			client_reject(c, MER_CHAN_R_MALFORMED);
			rv = MER_EPROTO;
			goto next;
		}
		ptcap = nng_msg_len(rep);
		pt = malloc(ptcap);
		if (!pt) {
			rv = MER_ENOMEM;
			goto next;
		}
		pthread_mutex_lock(&s->mu);
		rv = mer_chan_open_reply(&s->ch, nng_msg_body(rep),
					 nng_msg_len(rep), req, &t, pt, ptcap,
					 &ptlen, &reason);
		pthread_mutex_unlock(&s->mu);
		if (rv != 0) {
			/* Tampered, replayed, or the answer to some other
			 * request: not an answer to this one. */
			client_reject(c, reason);
			rv = MER_EPROTO;
			goto next;
		}
		pthread_mutex_lock(&c->mu);
		c->st.messages_in++;
		pthread_mutex_unlock(&c->mu);
		obj = parse_object(pt, ptlen);
		sodium_memzero(pt, ptlen);
		if (!obj) {
			client_reject(c, MER_CHAN_R_BAD_PAYLOAD);
			rv = MER_EPROTO;
			goto next;
		}
		if (t == MER_WIRE_ERROR) {
			json_t *cv = json_object_get(obj, "code");
			rv = json_is_integer(cv) ? (int)json_integer_value(cv)
						 : MER_EPROTO;
			if (rv == 0)
				rv = MER_EPROTO;
			*final = 1; /* sealed: the broker's own word */
			json_decref(obj);
			obj = NULL;
			if (rv == MER_EEXPIRED && !fixed) {
				invalidate(c, s);
				retry = 1;
				*final = 0;
			} else if (rv == MER_EREVOKED && !fixed) {
				pthread_mutex_lock(&c->mu);
				c->revoked = 1;
				pthread_mutex_unlock(&c->mu);
				mer_error("this site was revoked by the broker",
					  "url=%s", c->url);
			}
			goto next;
		}
		*rtype = t;
		*reply = obj;
		rv = 0;
	next:
		if (pt)
			sodium_memzero(pt, ptcap);
		free(pt);
		if (rep)
			nng_msg_free(rep);
		csess_unref(c, s);
		if (!retry)
			return rv;
	}
	return rv;
}

/* A call into the client from outside: refused once close has begun, and
 * counted so that close waits for the calls in flight. */
static int client_enter(struct mer_link_client *c)
{
	int rv = 0;

	pthread_mutex_lock(&c->mu);
	if (c->closing)
		rv = MER_ECLOSED;
	else
		c->active++;
	pthread_mutex_unlock(&c->mu);
	return rv;
}

static void client_leave(struct mer_link_client *c)
{
	pthread_mutex_lock(&c->mu);
	if (--c->active == 0)
		pthread_cond_broadcast(&c->cv);
	pthread_mutex_unlock(&c->mu);
}

static int report_text(struct mer_link_client *c, const char *text, size_t len,
		       int timeout_ms, int *final)
{
	json_t *reply = NULL;
	int t = 0, rv;

	rv = call(c, NULL, MER_WIRE_REPORT, text, len,
		  timeout_ms > 0 ? timeout_ms : c->timeout_ms, &t, &reply,
		  final);
	if (rv == 0 && t != MER_WIRE_ACK)
		rv = MER_EPROTO;
	json_decref(reply);
	if (rv == 0) {
		pthread_mutex_lock(&c->mu);
		c->st.reports++;
		pthread_mutex_unlock(&c->mu);
	}
	return rv;
}

static int report_json(struct mer_link_client *c, const json_t *report,
		       int timeout_ms, int *final)
{
	char *text;
	int rv;

	*final = 0;
	if (!json_is_object(report))
		return MER_EINVAL;
	text = json_dumps(report, JSON_COMPACT);
	if (!text)
		return MER_ENOMEM;
	rv = report_text(c, text, strlen(text), timeout_ms, final);
	free(text);
	return rv;
}

int mer_link_client_report(struct mer_link_client *c, const json_t *report,
			   int timeout_ms)
{
	int rv = client_enter(c), final;

	if (rv != 0)
		return rv;
	rv = report_json(c, report, timeout_ms, &final);
	client_leave(c);
	return rv;
}

/* Errors after which resending the same report cannot help, when they are
 * final (call()): the broker said so in a sealed ERROR, or the report can
 * never fit. A NOTICE or a bad reply saying the same is only retried. */
static int permanent(int rv)
{
	return rv == MER_EPARSE || rv == MER_EINVAL || rv == MER_EPROTO ||
	       rv == MER_ETOOBIG;
}

static void wait_ms_locked(struct mer_link_client *c, int ms)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	ts.tv_sec += ms / 1000;
	ts.tv_nsec += (long)(ms % 1000) * 1000000L;
	if (ts.tv_nsec >= 1000000000L) {
		ts.tv_sec++;
		ts.tv_nsec -= 1000000000L;
	}
	pthread_cond_timedwait(&c->cv, &c->mu, &ts);
}

static void *sender_main(void *arg)
{
	struct mer_link_client *c = arg;
	int backoff = c->retry_min_ms;

	pthread_mutex_lock(&c->mu);
	for (;;) {
		while (!c->closing && !c->revoked && !c->head)
			pthread_cond_wait(&c->cv, &c->mu);
		if (c->closing || c->revoked)
			break;
		json_t *report = json_incref(c->head->report);
		int final = 0;
		pthread_mutex_unlock(&c->mu);
		int rv = report_json(c, report, 0, &final);
		json_decref(report);
		pthread_mutex_lock(&c->mu);
		if (rv == 0 || (final && permanent(rv))) {
			struct obox *o = c->head;
			c->head = o->next;
			if (!c->head)
				c->tail = NULL;
			c->queued--;
			json_decref(o->report);
			free(o);
			if (rv != 0)
				mer_warn("report dropped", "error=%s",
					 mer_errname(rv));
			backoff = c->retry_min_ms;
			pthread_cond_broadcast(&c->cv);
			continue;
		}
		if (c->closing || c->revoked)
			break;
		mer_debug("report delivery failed, retrying",
			  "error=%s backoff_ms=%d", mer_errname(rv), backoff);
		wait_ms_locked(c, backoff);
		backoff = backoff * 2 > c->retry_max_ms ? c->retry_max_ms
							: backoff * 2;
	}
	pthread_cond_broadcast(&c->cv);
	pthread_mutex_unlock(&c->mu);
	return NULL;
}

int mer_link_client_open(const struct mer_link_client_opts *opts,
			 struct mer_link_client **out)
{
	struct mer_link_client *c;
	pthread_condattr_t ca;
	uint8_t probe[MER_KEY_BYTES] = {0};
	int rv;

	*out = NULL;
	if (!opts || !opts->url || !opts->key || !opts->broker_fp ||
	    mer_key_fingerprint_check(probe, opts->broker_fp) == MER_EPARSE ||
	    (opts->max_payload &&
	     opts->max_payload > MER_WIRE_LIMIT_MAX_PAYLOAD))
		return MER_EINVAL;
	if (sodium_init() < 0)
		return MER_ECRYPTO;
	c = calloc(1, sizeof(*c));
	if (!c)
		return MER_ENOMEM;
	c->key = *opts->key;
	snprintf(c->url, sizeof(c->url), "%s", opts->url);
	snprintf(c->fp, sizeof(c->fp), "%s", opts->broker_fp);
	c->max_payload = opts->max_payload ? opts->max_payload
					   : MER_WIRE_DEFAULT_MAX_PAYLOAD;
	c->max_msg = c->max_payload + MER_WIRE_OVERHEAD;
	c->timeout_ms = opts->request_timeout_ms > 0 ? opts->request_timeout_ms
						     : DEFAULT_TIMEOUT_MS;
	c->outbox_max =
	    opts->outbox_max > 0 ? opts->outbox_max : DEFAULT_OUTBOX_MAX;
	c->retry_min_ms = opts->retry_min_ms > 0 ? opts->retry_min_ms : 100;
	c->retry_max_ms = opts->retry_max_ms > 0 ? opts->retry_max_ms : 5000;
	if (c->retry_max_ms < c->retry_min_ms)
		c->retry_max_ms = c->retry_min_ms;
	c->acks = json_array();
	pthread_condattr_init(&ca);
	pthread_condattr_setclock(&ca, CLOCK_MONOTONIC);
	if (!c->acks || pthread_mutex_init(&c->mu, NULL) != 0 ||
	    pthread_cond_init(&c->cv, &ca) != 0) {
		pthread_condattr_destroy(&ca);
		json_decref(c->acks);
		mer_keypair_wipe(&c->key);
		free(c);
		return MER_ENOMEM;
	}
	pthread_condattr_destroy(&ca);
	rv = nng_req0_open(&c->sock);
	if (rv != 0) {
		rv = from_nng(rv);
		goto out_free;
	}
	nng_socket_set_ms(c->sock, NNG_OPT_REQ_RESENDTIME,
			  NNG_DURATION_INFINITE);
	nng_socket_set_size(c->sock, NNG_OPT_RECVMAXSZ, 2 * c->max_msg);
	nng_socket_set_ms(c->sock, NNG_OPT_RECONNMINT, 100);
	nng_socket_set_ms(c->sock, NNG_OPT_RECONNMAXT, 2000);
	rv = nng_dial(c->sock, c->url, NULL, NNG_FLAG_NONBLOCK);
	if (rv != 0) {
		mer_error("link dial failed", "url=%s error=%s", c->url,
			  nng_strerror(rv));
		nng_close(c->sock);
		rv = MER_EINVAL;
		goto out_free;
	}
	if (pthread_create(&c->sender, NULL, sender_main, c) != 0) {
		nng_close(c->sock);
		rv = MER_ENOMEM;
		goto out_free;
	}
	c->sender_started = 1;
	*out = c;
	return 0;

out_free:
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
	json_decref(c->acks);
	mer_keypair_wipe(&c->key);
	free(c);
	return rv;
}

void mer_link_client_close(struct mer_link_client *c)
{
	struct xchg *x;

	if (!c)
		return;
	pthread_mutex_lock(&c->mu);
	c->closing = 1;
	pthread_cond_broadcast(&c->cv);
	pthread_mutex_unlock(&c->mu);
	/* Closing the socket ends exchanges in flight with NNG_ECLOSED. */
	nng_close(c->sock);
	if (c->sender_started)
		pthread_join(c->sender, NULL);
	/* Calls in flight in other threads now fail fast; wait for them to
	 * leave before freeing what they use. */
	pthread_mutex_lock(&c->mu);
	while (c->active > 0)
		pthread_cond_wait(&c->cv, &c->mu);
	pthread_mutex_unlock(&c->mu);
	while ((x = c->free_x) != NULL) {
		c->free_x = x->next;
		nng_aio_free(x->aio);
		free(x);
	}
	while (c->head) {
		struct obox *o = c->head;
		c->head = o->next;
		json_decref(o->report);
		free(o);
	}
	if (c->cur)
		csess_unref(c, c->cur);
	json_decref(c->acks);
	pthread_cond_destroy(&c->cv);
	pthread_mutex_destroy(&c->mu);
	mer_keypair_wipe(&c->key);
	free(c);
}

int mer_link_client_enqueue(struct mer_link_client *c, json_t *report)
{
	struct obox *o;
	int rv = 0;

	if (!json_is_object(report)) {
		json_decref(report);
		return MER_EINVAL;
	}
	o = calloc(1, sizeof(*o));
	if (!o) {
		json_decref(report);
		return MER_ENOMEM;
	}
	o->report = report;
	pthread_mutex_lock(&c->mu);
	if (c->revoked)
		rv = MER_EREVOKED;
	else if (c->closing)
		rv = MER_ECLOSED;
	else if (c->queued >= (size_t)c->outbox_max)
		rv = MER_EBUSY;
	if (rv == 0) {
		if (c->tail)
			c->tail->next = o;
		else
			c->head = o;
		c->tail = o;
		c->queued++;
		pthread_cond_broadcast(&c->cv);
	}
	pthread_mutex_unlock(&c->mu);
	if (rv != 0) {
		json_decref(report);
		free(o);
	}
	return rv;
}

int mer_link_client_flush(struct mer_link_client *c, int timeout_ms)
{
	int64_t deadline = now_ms() + timeout_ms;
	int rv = client_enter(c);

	if (rv != 0)
		return rv;
	pthread_mutex_lock(&c->mu);
	while (c->queued > 0) {
		int64_t left = deadline - now_ms();
		if (left <= 0 || c->closing) {
			rv = MER_ETIMEDOUT;
			break;
		}
		if (c->revoked) {
			rv = MER_EREVOKED;
			break;
		}
		wait_ms_locked(c, left > 100 ? 100 : (int)left);
	}
	pthread_mutex_unlock(&c->mu);
	client_leave(c);
	return rv;
}

size_t mer_link_client_queued(struct mer_link_client *c)
{
	size_t n;

	pthread_mutex_lock(&c->mu);
	n = c->queued;
	pthread_mutex_unlock(&c->mu);
	return n;
}

static int client_poll(struct mer_link_client *c, int wait_ms,
		       json_t **commands)
{
	json_t *req, *reply = NULL, *cmds, *ids, *v;
	char *text;
	size_t i;
	int t = 0, rv, final;

	*commands = NULL;
	if (wait_ms < 0)
		wait_ms = 0;
	/* wait_ms + timeout_ms below must not overflow an int. */
	if (wait_ms > INT_MAX - c->timeout_ms)
		wait_ms = INT_MAX - c->timeout_ms;
	pthread_mutex_lock(&c->mu);
	req = json_pack("{s:i, s:O}", "wait_ms", wait_ms, "ack", c->acks);
	pthread_mutex_unlock(&c->mu);
	text = req ? json_dumps(req, JSON_COMPACT) : NULL;
	json_decref(req);
	if (!text)
		return MER_ENOMEM;
	rv = call(c, NULL, MER_WIRE_POLL, text, strlen(text),
		  wait_ms + c->timeout_ms, &t, &reply, &final);
	free(text);
	if (rv != 0)
		return rv; /* the acks stay for the next poll */
	cmds = json_object_get(reply, "commands");
	if (t != MER_WIRE_COMMANDS || !json_is_array(cmds)) {
		json_decref(reply);
		return MER_EPROTO;
	}
	ids = json_array();
	json_array_foreach(cmds, i, v)
	{
		json_t *id = json_object_get(v, "id");
		if (json_is_string(id))
			json_array_append(ids, id);
	}
	pthread_mutex_lock(&c->mu);
	json_decref(c->acks);
	c->acks = ids ? ids : json_array();
	c->st.polls++;
	c->st.commands += json_array_size(cmds);
	pthread_mutex_unlock(&c->mu);
	*commands = json_incref(cmds);
	json_decref(reply);
	return 0;
}

int mer_link_client_poll(struct mer_link_client *c, int wait_ms,
			 json_t **commands)
{
	int rv = client_enter(c);

	*commands = NULL;
	if (rv != 0)
		return rv;
	rv = client_poll(c, wait_ms, commands);
	client_leave(c);
	return rv;
}

void mer_link_client_get_stats(struct mer_link_client *c,
			       struct mer_link_stats *out)
{
	pthread_mutex_lock(&c->mu);
	*out = c->st;
	pthread_mutex_unlock(&c->mu);
}

int mer_link_join(const struct mer_link_client_opts *opts, const char *token,
		  char site[MER_LINK_NAME_MAX], char region[MER_LINK_NAME_MAX])
{
	struct mer_link_client *c = NULL;
	struct csess *s = NULL;
	struct mer_token tk;
	json_t *reply = NULL;
	char payload[MER_TOKEN_LEN + 32];
	int rv, t = 0, n, final = 0;

	site[0] = region[0] = '\0';
	/* Refuse a malformed token before it leaves the machine. */
	rv = mer_token_parse(token, &tk);
	mer_token_wipe(&tk);
	if (rv != 0)
		return MER_EPARSE;
	rv = mer_link_client_open(opts, &c);
	if (rv != 0)
		return rv;
	rv = handshake(c, 1, &s, &final);
	if (rv != 0)
		goto out;
	/* The token is letters, digits and one dot (checked above): no JSON
	 * escaping needed, and the buffer can be wiped afterwards. */
	n = snprintf(payload, sizeof(payload), "{\"token\":\"%s\"}", token);
	rv = call(c, s, MER_WIRE_JOIN, payload, (size_t)n, c->timeout_ms, &t,
		  &reply, &final);
	sodium_memzero(payload, sizeof(payload));
	if (rv != 0)
		goto out;
	if (t != MER_WIRE_ACK ||
	    !json_is_string(json_object_get(reply, "site"))) {
		rv = MER_EPROTO;
		goto out;
	}
	snprintf(site, MER_LINK_NAME_MAX, "%s",
		 json_string_value(json_object_get(reply, "site")));
	snprintf(region, MER_LINK_NAME_MAX, "%s",
		 json_string_value(json_object_get(reply, "region"))
		     ? json_string_value(json_object_get(reply, "region"))
		     : "");
	pthread_mutex_lock(&c->mu);
	c->st.joins++;
	pthread_mutex_unlock(&c->mu);
out:
	json_decref(reply);
	if (s)
		csess_unref(c, s);
	mer_link_client_close(c);
	return rv;
}
