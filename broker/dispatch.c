/*
 * Dispatch over the agent link (common/link.h, docs/AGENT.md): the link
 * server's hooks (keys and joins through membership.h, site summaries into
 * etcd, stage events into job records), launches of placed stages whose
 * dependencies have succeeded, cancels, and re-sending what was in flight
 * after a restart. Every state change is a guarded update (store.h).
 * Not placement (placer.c).
 */
#include "broker/broker.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/log.h"

#define KEY_MAX 320

static int is(const char *a, const char *b)
{
	return a && strcmp(a, b) == 0;
}

static int terminal(const char *st)
{
	return is(st, MER_ST_SUCCEEDED) || is(st, MER_ST_FAILED) ||
	       is(st, MER_ST_CANCELLED);
}

/* The stage id an agent knows: "<job>/<stage>/<attempt>", so a retry is a
 * new stage for the agent (which remembers finished ones). */
static void stage_uid(char *out, size_t n, const char *job, const char *stage,
		      long long attempt)
{
	snprintf(out, n, "%s/%s/%lld", job, stage, attempt);
}

static int parse_uid(const char *uid, char job[MER_JOB_ID_SIZE], char *stage,
		     size_t sn, long long *attempt)
{
	const char *a = strchr(uid, '/'), *c = strrchr(uid, '/');
	char *end;

	if (!a || c == a || (size_t)(a - uid) != MER_JOB_ID_LEN ||
	    (size_t)(c - a - 1) >= sn)
		return MER_EINVAL;
	memcpy(job, uid, MER_JOB_ID_LEN);
	job[MER_JOB_ID_LEN] = 0;
	memcpy(stage, a + 1, (size_t)(c - a - 1));
	stage[c - a - 1] = 0;
	*attempt = strtoll(c + 1, &end, 10);
	return *end || !mer_job_id_valid(job) ? MER_EINVAL : 0;
}

/* ---- job state from its stages ------------------------------------------ */

static void job_state(json_t *rec, long long now)
{
	json_t *stages = json_object_get(rec, "stages"), *s;
	size_t i, n = json_array_size(stages), ok = 0, done = 0, live = 0;
	int failed = 0;

	json_array_foreach (stages, i, s) {
		const char *st = json_string_value(json_object_get(s, "state"));
		ok += is(st, MER_ST_SUCCEEDED);
		done += terminal(st);
		failed |= is(st, MER_ST_FAILED);
		live += is(st, MER_ST_DISPATCHED) || is(st, MER_ST_RUNNING);
	}
	if (failed) {
		/* The job has failed: what has not started never will. */
		json_array_foreach (stages, i, s) {
			const char *st =
			    json_string_value(json_object_get(s, "state"));
			if (is(st, MER_ST_PENDING) || is(st, MER_ST_PLACED))
				json_object_set_new(
				    s, "state", json_string(MER_ST_CANCELLED));
			else if (!terminal(st))
				json_object_set_new(s, "cancel_requested",
						    json_true());
		}
	}
	const char *js;
	if (ok == n)
		js = MER_ST_SUCCEEDED;
	else if (done == n)
		js = failed ? MER_ST_FAILED : MER_ST_CANCELLED;
	else if (failed)
		js = MER_ST_FAILED;
	else if (live)
		js = MER_ST_RUNNING;
	else
		js = json_string_value(json_object_get(rec, "state"));
	if (js && !is(json_string_value(json_object_get(rec, "state")), js)) {
		json_object_set_new(rec, "state", json_string(js));
		if (terminal(js))
			json_object_set_new(rec, "finished_at",
					    json_integer(now));
	}
	json_object_set_new(rec, "updated_at", json_integer(now));
}

/* ---- launches ------------------------------------------------------------ */

struct launch {
	char site[MER_LINK_NAME_MAX];
	char stage[128];
	long long attempt;
	int cancel;
};

struct ready_ctx {
	struct launch *l;
	size_t n, cap;
	long long now;
};

static int add_launch(struct ready_ctx *c, const char *site, const char *stage,
		      long long attempt, int cancel)
{
	if (c->n == c->cap) {
		size_t nc = c->cap ? 2 * c->cap : 8;
		void *p = realloc(c->l, nc * sizeof(*c->l));
		if (!p)
			return MER_ENOMEM;
		c->l = p;
		c->cap = nc;
	}
	struct launch *l = &c->l[c->n++];
	snprintf(l->site, sizeof(l->site), "%s", site ? site : "");
	snprintf(l->stage, sizeof(l->stage), "%s", stage);
	l->attempt = attempt;
	l->cancel = cancel;
	return 0;
}

/* Marks every placed stage whose dependencies succeeded as dispatched. */
static int mutate_ready(void *arg, json_t *rec)
{
	struct ready_ctx *c = arg;
	json_t *stages = json_object_get(rec, "stages"), *s;
	size_t i;
	int changed = 0;

	c->n = 0;
	if (terminal(json_string_value(json_object_get(rec, "state"))) ||
	    json_is_true(json_object_get(rec, "cancel_requested")))
		return MER_ECANCELED;
	json_array_foreach (stages, i, s) {
		if (!is(json_string_value(json_object_get(s, "state")),
			MER_ST_PLACED))
			continue;
		int ready = 1;
		size_t k;
		json_t *dep;
		json_array_foreach (json_object_get(s, "after"), k, dep) {
			for (size_t j = 0; j < json_array_size(stages); j++) {
				json_t *o = json_array_get(stages, j);
				if (is(json_string_value(
					   json_object_get(o, "name")),
				       json_string_value(dep)) &&
				    !is(json_string_value(
					    json_object_get(o, "state")),
					MER_ST_SUCCEEDED))
					ready = 0;
			}
		}
		if (!ready)
			continue;
		long long attempt =
		    json_integer_value(json_object_get(s, "attempts")) + 1;
		json_object_set_new(s, "attempts", json_integer(attempt));
		json_object_set_new(s, "state", json_string(MER_ST_DISPATCHED));
		json_object_set_new(s, "dispatched_at", json_integer(c->now));
		if (add_launch(c, json_string_value(json_object_get(s, "site")),
			       json_string_value(json_object_get(s, "name")),
			       attempt, 0))
			return MER_ENOMEM;
		changed = 1;
	}
	if (!changed)
		return MER_ECANCELED;
	job_state(rec, c->now);
	return 0;
}

static json_t *launch_cmd(const json_t *rec, const struct launch *l)
{
	const char *id = json_string_value(json_object_get(rec, "id"));
	const json_t *spec = json_object_get(rec, "spec"), *ss = NULL, *v;
	char uid[200], cid[220], cmdline[1024] = "";
	size_t i, off = 0;

	json_array_foreach (json_object_get(spec, "stages"), i, v)
		if (is(json_string_value(json_object_get(v, "name")), l->stage))
			ss = v;
	stage_uid(uid, sizeof(uid), id, l->stage, l->attempt);
	snprintf(cid, sizeof(cid), "%s#launch", uid);
	const json_t *cmd = json_object_get(ss, "command");
	json_array_foreach (cmd, i, v) {
		int w = snprintf(cmdline + off, sizeof(cmdline) - off, "%s%s",
				 i ? " " : "", json_string_value(v));
		if (w < 0 || (size_t)w >= sizeof(cmdline) - off)
			break;
		off += (size_t)w;
	}
	if (json_is_string(cmd))
		snprintf(cmdline, sizeof(cmdline), "%s",
			 json_string_value(cmd));
	if (!cmdline[0])
		snprintf(cmdline, sizeof(cmdline), "true");
	const json_t *res = json_object_get(ss, "resources");
	const json_t *gpu = json_object_get(res, "gpu");
	double cpus = json_number_value(json_object_get(res, "cpu"));
	double mem = json_number_value(json_object_get(res, "memory_mb"));
	json_int_t reps = json_integer_value(json_object_get(ss, "replicas"));
	/* The agent takes whole cores and megabytes. */
	json_t *st = json_pack(
	    "{s:s, s:s, s:I, s:I, s:I, s:I, s:b}", "id", uid, "command",
	    cmdline, "cpus", (json_int_t)ceil(cpus), "memory_mb",
	    (json_int_t)ceil(mem), "gpus",
	    (json_int_t)json_integer_value(json_object_get(gpu, "count")),
	    "replicas", reps > 0 ? reps : (json_int_t)1, "gang",
	    json_is_true(json_object_get(ss, "gang")));
	if (!st)
		return NULL;
	if ((v = json_array_get(json_object_get(gpu, "models"), 0)))
		json_object_set(st, "gpu_model", (json_t *)v);
	if ((v = json_object_get(ss, "image")))
		json_object_set(st, "image", (json_t *)v);
	if ((v = json_object_get(ss, "duration_s")))
		json_object_set(st, "duration_s", (json_t *)v);
	return json_pack("{s:s, s:s, s:o}", "id", cid, "type", "launch",
			 "stage", st);
}

static void send_commands(struct mer_broker *b, const json_t *rec,
			  const struct launch *l, size_t n)
{
	for (size_t i = 0; i < n && b->link; i++) {
		json_t *cmd;
		char uid[200], cid[220];
		int rv;

		if (l[i].cancel) {
			stage_uid(uid, sizeof(uid),
				  json_string_value(json_object_get(rec, "id")),
				  l[i].stage, l[i].attempt);
			snprintf(cid, sizeof(cid), "%s#cancel", uid);
			cmd = json_pack("{s:s, s:s, s:s}", "id", cid, "type",
					"cancel", "stage_id", uid);
		} else {
			cmd = launch_cmd(rec, &l[i]);
		}
		if (!cmd)
			continue;
		rv = mer_link_server_queue_command(b->link, l[i].site, cmd);
		if (rv && rv != MER_EEXIST)
			mer_warn("command not queued",
				 "site=%s stage=%s err=%s", l[i].site,
				 l[i].stage, mer_errname(rv));
		else
			mer_info(l[i].cancel ? "cancel sent" : "stage launched",
				 "job=%s stage=%s site=%s attempt=%lld",
				 json_string_value(json_object_get(rec, "id")),
				 l[i].stage, l[i].site, l[i].attempt);
		json_decref(cmd);
	}
}

void mer_dispatch_job(struct mer_broker *b, const char *id)
{
	struct ready_ctx c = {.now = (long long)time(NULL)};
	json_t *after = NULL;

	if (!b->link)
		return;
	if (mer_store_update(b->store, id, mutate_ready, &c, &after) == 0 &&
	    after) {
		mer_placer_note(b, after);
		send_commands(b, after, c.l, c.n);
	}
	json_decref(after);
	free(c.l);
}

/* Commands for what a record has in flight: launches of dispatched stages
 * and cancels of stages asked to stop. Repeats are harmless (the agent
 * knows stage ids; queued ids are deduplicated). */
void mer_dispatch_resend(struct mer_broker *b, const json_t *rec)
{
	struct ready_ctx c = {0};
	json_t *s;
	size_t i;

	if (!b->link)
		return;
	json_array_foreach (json_object_get(rec, "stages"), i, s) {
		const char *st = json_string_value(json_object_get(s, "state"));
		const char *site =
		    json_string_value(json_object_get(s, "site"));
		const char *name =
		    json_string_value(json_object_get(s, "name"));
		long long att =
		    json_integer_value(json_object_get(s, "attempts"));
		if (!site || !name || terminal(st))
			continue;
		int cancel =
		    json_is_true(json_object_get(s, "cancel_requested"));
		if (is(st, MER_ST_DISPATCHED) && !cancel)
			add_launch(&c, site, name, att, 0);
		if ((is(st, MER_ST_DISPATCHED) || is(st, MER_ST_RUNNING)) &&
		    cancel)
			add_launch(&c, site, name, att, 1);
	}
	send_commands(b, rec, c.l, c.n);
	free(c.l);
}

/* ---- events -------------------------------------------------------------- */

struct event_ctx {
	const char *site;
	const char *stage;
	long long attempt;
	const char *event;
	int exit_code;
	const char *reason;
	long long now;
	long long retry_limit;
	int stale;
};

static int mutate_event(void *arg, json_t *rec)
{
	struct event_ctx *c = arg;
	json_t *s = NULL, *v;
	size_t i;

	c->stale = 0;
	json_array_foreach (json_object_get(rec, "stages"), i, v)
		if (is(json_string_value(json_object_get(v, "name")), c->stage))
			s = v;
	if (!s)
		return MER_ECANCELED;
	const char *st = json_string_value(json_object_get(s, "state"));
	long long att = json_integer_value(json_object_get(s, "attempts"));
	if (att != c->attempt ||
	    !is(json_string_value(json_object_get(s, "site")), c->site)) {
		/* An older attempt, or a copy on a site the stage left. */
		c->stale = 1;
		return MER_ECANCELED;
	}
	if (terminal(st))
		return MER_ECANCELED; /* a duplicate */
	if (is(c->event, "started")) {
		if (is(st, MER_ST_RUNNING))
			return MER_ECANCELED;
		json_object_set_new(s, "state", json_string(MER_ST_RUNNING));
		json_object_set_new(s, "started_at", json_integer(c->now));
	} else if (is(c->event, "finished")) {
		json_object_set_new(s, "state", json_string(MER_ST_SUCCEEDED));
		json_object_set_new(s, "exit_code", json_integer(c->exit_code));
		json_object_set_new(s, "finished_at", json_integer(c->now));
	} else if (is(c->event, "failed") || is(c->event, "lost")) {
		json_object_set_new(s, "exit_code",
				    is(c->event, "failed")
					? json_integer(c->exit_code)
					: json_null());
		json_object_set_new(
		    s, "last_error",
		    json_string(c->reason ? c->reason : c->event));
		if (att <= c->retry_limit &&
		    !json_is_true(json_object_get(s, "cancel_requested"))) {
			/* Retried where it was placed; the next dispatch is
			 * a new attempt. */
			json_object_set_new(s, "state",
					    json_string(MER_ST_PLACED));
		} else {
			json_object_set_new(s, "state",
					    json_string(MER_ST_FAILED));
			json_object_set_new(s, "finished_at",
					    json_integer(c->now));
		}
	} else if (is(c->event, "cancelled")) {
		json_object_set_new(s, "state", json_string(MER_ST_CANCELLED));
		json_object_set_new(s, "finished_at", json_integer(c->now));
	} else {
		return MER_ECANCELED;
	}
	job_state(rec, c->now);
	return 0;
}

static void handle_event(struct mer_broker *b, const char *site,
			 const json_t *ev, long long retry_limit)
{
	char job[MER_JOB_ID_SIZE], stage[128];
	const char *uid = json_string_value(json_object_get(ev, "stage"));
	struct event_ctx c = {
	    .site = site,
	    .stage = stage,
	    .event = json_string_value(json_object_get(ev, "event")),
	    .exit_code =
		(int)json_integer_value(json_object_get(ev, "exit_code")),
	    .reason = json_string_value(json_object_get(ev, "reason")),
	    .now = (long long)time(NULL),
	    .retry_limit = retry_limit};
	json_t *after = NULL;
	int rv;

	if (!uid || !c.event ||
	    parse_uid(uid, job, stage, sizeof(stage), &c.attempt))
		return;
	rv = mer_store_update(b->store, job, mutate_event, &c, &after);
	if (rv == 0 && c.stale && is(c.event, "started") && b->link) {
		/* The site came back with a copy the broker gave up on. */
		json_t *cmd = json_pack("{s:s, s:s, s:s}", "id", uid, "type",
					"cancel", "stage_id", uid);
		if (cmd)
			mer_link_server_queue_command(b->link, site, cmd);
		json_decref(cmd);
		mer_info("stale stage cancelled", "stage=%s site=%s", uid,
			 site);
	}
	if (rv == 0 && after && !c.stale) {
		mer_placer_note(b, after);
		mer_info("stage event", "stage=%s site=%s event=%s", uid, site,
			 c.event);
		mer_dispatch_job(b, job);
	}
	json_decref(after);
}

/* ---- link hooks ------------------------------------------------------------
 */

static int hook_check_key(void *arg, const uint8_t pk[MER_KEY_BYTES],
			  char site[MER_LINK_NAME_MAX])
{
	struct mer_broker *b = arg;

	return mer_membership_check_key(b->members, pk, site);
}

static int hook_join(void *arg, const char *token,
		     const uint8_t pk[MER_KEY_BYTES],
		     char site[MER_LINK_NAME_MAX],
		     char region[MER_LINK_NAME_MAX])
{
	struct mer_broker *b = arg;
	int rv = mer_membership_join(b->members, token, pk, site, region);

	if (rv == 0) {
		mer_info("site joined", "site=%s region=%s", site, region);
		mer_broker_fed_invalidate(b);
	}
	return rv;
}

static int hook_report(void *arg, const char *site, json_t *report)
{
	struct mer_broker *b = arg;
	const char *type = json_string_value(json_object_get(report, "type"));

	if (is(type, "summary")) {
		json_t *snap = json_deep_copy(json_object_get(report, "site"));
		char key[KEY_MAX];
		char *v;
		int rv;

		if (!json_is_object(snap)) {
			json_decref(snap);
			return MER_EPARSE;
		}
		/* The session says who this is, not the report. */
		json_object_set_new(snap, "name", json_string(site));
		json_object_set_new(snap, "last_heartbeat",
				    json_integer((long long)time(NULL)));
		mer_store_key(b->store, key, sizeof(key), "site-reports/%s",
			      site);
		v = mer_json_dumps(snap);
		json_decref(snap);
		if (!v)
			return MER_ENOMEM;
		rv = mer_etcd_put(b->etcd, key, strlen(key), v, strlen(v), 0,
				  NULL);
		free(v);
		if (rv)
			return MER_EBUSY;
		mer_placer_kick(b);
		return 0;
	}
	if (is(type, "events")) {
		struct mer_policy_ref *pr = mer_broker_policy_get(b);
		long long limit = pr ? pr->pol->retry_limit : 0;
		size_t i;
		json_t *ev;

		mer_broker_policy_put(b, pr);
		json_array_foreach (json_object_get(report, "results"), i, ev)
			if (!json_is_true(json_object_get(ev, "ok"))) {
				char *e = mer_json_dumps(
				    json_object_get(ev, "error"));
				mer_warn("command refused by agent",
					 "site=%s command=%s error=%s", site,
					 json_string_value(
					     json_object_get(ev, "command")),
					 e);
				/* A launch the agent cannot take is a failed
				 * attempt (retried up to the limit). */
				const char *cid = json_string_value(
				    json_object_get(ev, "command"));
				const char *h = cid ? strrchr(cid, '#') : NULL;
				if (h && strcmp(h, "#launch") == 0) {
					char uid[200];
					snprintf(uid, sizeof(uid), "%.*s",
						 (int)(h - cid), cid);
					json_t *fe = json_pack(
					    "{s:s, s:s, s:s}", "stage", uid,
					    "event", "failed", "reason",
					    "launch refused by the agent");
					if (fe)
						handle_event(b, site, fe,
							     limit);
					json_decref(fe);
				}
				free(e);
			}
		json_array_foreach (json_object_get(report, "events"), i, ev)
			handle_event(b, site, ev, limit);
		return 0;
	}
	return 0; /* unknown report types: acknowledged, ignored */
}

int mer_dispatch_start(struct mer_broker *b, char *err, size_t errlen)
{
	struct mer_keypair kp;
	int rv;

	if (!b->cfg.link_listen || !b->cfg.link_listen[0])
		return 0;
	if (!b->cfg.key_file || !b->cfg.key_file[0]) {
		snprintf(err, errlen, "listen.link needs key_file");
		return MER_EINVAL;
	}
	rv = mer_keypair_load(b->cfg.key_file, &kp, err, errlen);
	if (rv)
		return rv;
	/* Kept in b: the server may hold on to the ops. */
	b->link_ops = (struct mer_link_server_ops){.check_key = hook_check_key,
						   .join = hook_join,
						   .report = hook_report,
						   .arg = b};
	struct mer_link_server_opts lo = {.url = b->cfg.link_listen,
					  .key = &kp};
	rv = mer_link_server_start(&lo, &b->link_ops, &b->link);
	mer_keypair_wipe(&kp);
	if (rv) {
		snprintf(err, errlen, "listen.link: cannot listen on %s: %s",
			 b->cfg.link_listen, mer_strerror(rv));
		return rv;
	}
	mer_info("link listening", "url=%s", mer_link_server_url(b->link));
	return 0;
}

void mer_dispatch_stop(struct mer_broker *b)
{
	mer_link_server_stop(b->link);
	b->link = NULL;
}
