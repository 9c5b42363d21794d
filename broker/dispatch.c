/*
 * Dispatch over the agent link (common/link.h, docs/AGENT.md): the link
 * server's hooks (keys and joins through membership.h, site summaries into
 * etcd, stage events into job records), launches of placed stages whose
 * dependencies have succeeded, cancels, and re-sending what was in flight
 * after a restart; stage retries, lost sites (silent agents) and their
 * stale copies, preemption victims, finished-stage history. Every state
 * change is a guarded update (store.h). Not placement (placer.c).
 */
#include "broker/broker.h"
#include "broker/dispatch.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/err.h"
#include "common/log.h"
#include "policy/job.h"

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

/* The stage id an agent knows: "<job>/<stage>#<attempt>" (docs/AGENT.md),
 * so a retry is a new stage for the agent (which remembers finished ones). */
static void stage_uid(char *out, size_t n, const char *job, const char *stage,
		      long long attempt)
{
	snprintf(out, n, "%s/%s#%lld", job, stage, attempt);
}

static int parse_uid(const char *uid, char job[MER_JOB_ID_SIZE], char *stage,
		     size_t sn, long long *attempt)
{
	const char *a = strchr(uid, '/'), *c = strrchr(uid, '#');
	char *end;

	if (!a || !c || c <= a + 1 || (size_t)(a - uid) != MER_JOB_ID_LEN ||
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

void mer_dispatch_job_state(json_t *rec, long long now)
{
	json_t *stages = json_object_get(rec, "stages"), *s;
	size_t i, n = json_array_size(stages), ok = 0, done = 0, live = 0;
	size_t pending = 0;
	int failed = 0;

	json_array_foreach (stages, i, s) {
		const char *st = json_string_value(json_object_get(s, "state"));
		ok += is(st, MER_ST_SUCCEEDED);
		done += terminal(st);
		failed |= is(st, MER_ST_FAILED);
		live += is(st, MER_ST_DISPATCHED) || is(st, MER_ST_RUNNING);
		pending += is(st, MER_ST_PENDING);
	}
	if (failed) {
		/* The job has failed: what has not started never will. */
		json_array_foreach (stages, i, s) {
			const char *st =
			    json_string_value(json_object_get(s, "state"));
			if (is(st, MER_ST_PENDING) || is(st, MER_ST_PLACED)) {
				json_object_set_new(
				    s, "state", json_string(MER_ST_CANCELLED));
				json_object_set_new(s, "finished_at",
						    json_integer(now));
			} else if (!terminal(st)) {
				json_object_set_new(s, "cancel_requested",
						    json_true());
			}
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
	else if (pending)
		/* A stage waits for a site (first placement, or returned by
		 * a retry, a lost site or preemption): the placer takes
		 * jobs in this state. */
		js = MER_ST_PENDING;
	else if (ok)
		js = MER_ST_RUNNING; /* between stages */
	else
		js = MER_ST_PLACED;
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
	mer_dispatch_job_state(rec, c->now);
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
		/* Agents refuse commands of an older leader term. */
		json_object_set_new(cmd, "epoch",
				    json_integer(mer_leader_epoch(b)));
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
		for (size_t i = 0; i < c.n; i++)
			mer_dispatch_watch(b, c.l[i].site);
		send_commands(b, after, c.l, c.n);
	}
	json_decref(after);
	free(c.l);
}

/* Commands for what a record has in flight: launches of dispatched stages,
 * cancels of stages asked to stop, and cancels of copies the broker gave
 * up on (lost site, preemption) that no agent has answered yet: the
 * record's "stale" entries still "abandoned" are the durable truth, so a
 * broker restarted between a copy's abandonment and its "site-stale/"
 * entry still sends them. Repeats are harmless (the agent knows stage
 * ids; queued ids are deduplicated). */
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
		const json_t *e;
		size_t k;
		json_array_foreach (json_object_get(s, "stale"), k, e)
			if (name &&
			    is(json_string_value(json_object_get(e, "state")),
			       "abandoned"))
				add_launch(&c,
					   json_string_value(
					       json_object_get(e, "site")),
					   name,
					   json_integer_value(
					       json_object_get(e, "attempt")),
					   1);
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
	int stale;   /* the event is about a copy the broker gave up on */
	int replace; /* the stage went back to pending */
	int changed; /* the record was changed (not a duplicate) */
	struct mer_broker *b;
	const json_t *ev;      /* the event as the agent sent it */
	struct replicas *reps; /* outputs stored with a "finished" */
};

static void replicas_clear(struct replicas *rs);

/* The stage entry of rec named name, or NULL. */
static json_t *stage_named(json_t *rec, const char *name)
{
	json_t *v;
	size_t i;

	json_array_foreach (json_object_get(rec, "stages"), i, v)
		if (is(json_string_value(json_object_get(v, "name")), name))
			return v;
	return NULL;
}

/*
 * Returns a stage to pending so the placer finds it a site again (maybe
 * another one). The copy it had, if an agent may still hold it, is kept in
 * "stale" so that the site is told to cancel it when it is heard from.
 */
static void to_pending(json_t *s, const char *why, int abandon, long long now)
{
	const char *site = json_string_value(json_object_get(s, "site"));

	if (abandon && site) {
		json_t *list = json_object_get(s, "stale");
		if (!json_is_array(list)) {
			list = json_array();
			json_object_set_new(s, "stale", list);
		}
		json_array_append_new(
		    list,
		    json_pack(
			"{s:s, s:I, s:s, s:I}", "site", site, "attempt",
			json_integer_value(json_object_get(s, "attempts")),
			"state", "abandoned", "at", (json_int_t)now));
	}
	json_object_set_new(s, "state", json_string(MER_ST_PENDING));
	json_object_del(s, "site");
	json_object_del(s, "placed_at");
	json_object_del(s, "dispatched_at");
	json_object_del(s, "started_at");
	json_object_set_new(s, "pending_since", json_integer(now));
	json_object_set_new(s, "reason", json_string(why));
}

/* Records what became of the stale copy (site, attempt) of stage s: the
 * agent acknowledged its cancel ("cancel_acked"), or reported its end
 * (state "ended", "end" says how). 1 when anything changed. */
static int stale_ended(json_t *s, const char *site, long long attempt,
		       const char *how, long long now)
{
	json_t *v;
	size_t i;

	json_array_foreach (json_object_get(s, "stale"), i, v) {
		if (!is(json_string_value(json_object_get(v, "site")), site) ||
		    json_integer_value(json_object_get(v, "attempt")) !=
			attempt)
			continue;
		int acked = is(how, "cancel acknowledged");
		int open = is(json_string_value(json_object_get(v, "state")),
			      "abandoned");
		if (acked && json_is_true(json_object_get(v, "cancel_acked")))
			return 0;
		if (!acked && !open)
			return 0;
		if (acked)
			json_object_set_new(v, "cancel_acked", json_true());
		if (!acked || open) {
			json_object_set_new(v, "state", json_string("ended"));
			json_object_set_new(v, "end", json_string(how));
			json_object_set_new(v, "ended_at", json_integer(now));
		}
		return 1;
	}
	return 0;
}

static int mutate_event(void *arg, json_t *rec)
{
	struct event_ctx *c = arg;
	json_t *s = stage_named(rec, c->stage);

	c->stale = 0;
	c->replace = 0;
	c->changed = 0;
	if (c->reps)
		replicas_clear(c->reps); /* from an earlier try */
	if (!s)
		return MER_ECANCELED;
	const char *st = json_string_value(json_object_get(s, "state"));
	long long att = json_integer_value(json_object_get(s, "attempts"));
	if (att != c->attempt ||
	    !is(json_string_value(json_object_get(s, "site")), c->site)) {
		/* An older attempt, or a copy on a site the stage left. Its
		 * end is recorded; a live one is cancelled by the caller. */
		c->stale = 1;
		if (is(c->event, "started"))
			return MER_ECANCELED;
		if (!stale_ended(s, c->site, c->attempt, c->event, c->now))
			return MER_ECANCELED;
		json_object_set_new(rec, "updated_at", json_integer(c->now));
		c->changed = 1;
		return 0;
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
			/* Placed again, on whichever site is best now; the
			 * next dispatch is a new attempt. */
			char why[200];
			snprintf(why, sizeof(why),
				 "attempt %lld %s at %s; waiting to be "
				 "placed again",
				 att, c->event, c->site);
			to_pending(s, why, 0, c->now);
			c->replace = 1;
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
	mer_dispatch_job_state(rec, c->now);
	c->changed = 1;
	return 0;
}

static void queue_cancel(struct mer_broker *b, const char *site,
			 const char *uid)
{
	char cid[220];
	json_t *cmd;

	if (!b->link)
		return;
	snprintf(cid, sizeof(cid), "%s#cancel", uid);
	cmd = json_pack("{s:s, s:s, s:s, s:I}", "id", cid, "type", "cancel",
			"stage_id", uid, "epoch",
			(json_int_t)mer_leader_epoch(b));
	if (cmd)
		mer_link_server_queue_command(b->link, site, cmd);
	json_decref(cmd);
}

/*
 * Finished-stage history for learned estimates: per tenant, job name, stage
 * and site, the running means of runtime (started -> finished) and wait
 * (dispatched -> started) and the sample count, at
 * "<p>/history/<tenant>/<job name>/<stage>/<site>" (guarded
 * read-modify-write). The placer passes them to the engine.
 */
static void history_record(struct mer_broker *b, const json_t *rec,
			   const char *stage, const char *site)
{
	const json_t *s = NULL, *v;
	size_t i;
	char key[KEY_MAX];

	if (!json_string_value(json_object_get(rec, "tenant")) ||
	    !json_string_value(json_object_get(rec, "name")))
		return;
	json_array_foreach (json_object_get(rec, "stages"), i, v)
		if (is(json_string_value(json_object_get(v, "name")), stage))
			s = v;
	json_t *st = json_object_get(s, "started_at");
	json_t *dt = json_object_get(s, "dispatched_at");
	json_t *ft = json_object_get(s, "finished_at");
	if (!json_is_integer(st) || !json_is_integer(ft))
		return;
	double runtime =
	    (double)(json_integer_value(ft) - json_integer_value(st));
	double wait =
	    json_is_integer(dt)
		? (double)(json_integer_value(st) - json_integer_value(dt))
		: -1;
	if (!mer_store_key(b->store, key, sizeof(key), "history/%s/%s/%s/%s",
			   json_string_value(json_object_get(rec, "tenant")),
			   json_string_value(json_object_get(rec, "name")),
			   stage, site))
		return;
	for (int tries = 0; tries < 4; tries++) {
		struct mer_etcd_kv kv = {0};
		json_t *o = NULL;
		int64_t mod = 0;
		int rv = mer_etcd_get(b->etcd, key, strlen(key), &kv, NULL);
		if (rv == 0) {
			o = json_loadb(kv.value, kv.value_len, 0, NULL);
			mod = kv.mod_revision;
		} else if (rv != MER_ENOTFOUND) {
			return;
		}
		mer_etcd_kv_clear(&kv);
		if (!json_is_object(o)) {
			json_decref(o);
			o = json_object();
		}
		double n = json_number_value(json_object_get(o, "samples"));
		double r0 = json_number_value(json_object_get(o, "runtime_s"));
		double w0 = json_number_value(json_object_get(o, "wait_s"));
		double wn =
		    json_number_value(json_object_get(o, "wait_samples"));
		json_object_set_new(o, "samples", json_real(n + 1));
		json_object_set_new(o, "runtime_s",
				    json_real((r0 * n + runtime) / (n + 1)));
		if (wait >= 0) {
			json_object_set_new(
			    o, "wait_s",
			    json_real((w0 * wn + wait) / (wn + 1)));
			json_object_set_new(o, "wait_samples",
					    json_real(wn + 1));
		}
		json_object_set_new(o, "updated_at",
				    json_integer((long long)time(NULL)));
		char *text = mer_json_dumps(o);
		if (!text) {
			json_decref(o);
			return;
		}
		rv = mer_etcd_put_if_mod_revision(b->etcd, key, strlen(key),
						  text, strlen(text), 0, mod,
						  NULL);
		free(text);
		if (rv == 0)
			mer_placer_history_note(
			    b,
			    json_string_value(json_object_get(rec, "tenant")),
			    json_string_value(json_object_get(rec, "name")),
			    stage, site, o);
		json_decref(o);
		if (rv != MER_ECOMPARE)
			return;
	}
}

/*
 * The outputs of a stage that succeeded become dataset replicas at its
 * site: "<p>/replicas/<site>/<output name>" = {name, bytes, tags, site,
 * job, stage, created_at, bytes_from} (a newer output of the same name at
 * the site replaces the older). bytes is what the agent's "finished" event
 * says the stage wrote ("outputs": [{"name", "bytes"}], bytes_from
 * "agent"), else the size the job declared ("job"). Snapshots list them
 * in the site's datasets (mer_placer_annotate_site), so later stages and
 * jobs reading them are placed near them.
 *
 * They are written in the same etcd txn as the job record that marks the
 * stage succeeded (event_extra, through mer_store_update_ops), so neither
 * is ever stored without the other. That txn holds one put per output
 * plus the record and its index entry: the job validator's bound on a
 * stage's outputs keeps it within etcd's default --max-txn-ops.
 */
#define ETCD_TXN_OPS 128 /* etcd's default --max-txn-ops */
_Static_assert(MER_JOB_MAX_DATASETS + 2 <= ETCD_TXN_OPS,
	       "a stage's replicas, its record and its index entry must fit "
	       "in one txn at etcd's default --max-txn-ops");

struct replica {
	char key[KEY_MAX];
	char *text;
	json_t *o;
};

struct replicas {
	struct replica *r; /* MER_JOB_MAX_DATASETS once allocated */
	size_t n;
};

/* Empties rs (kept allocated for another try); replicas_free frees it. */
static void replicas_clear(struct replicas *rs)
{
	for (size_t i = 0; i < rs->n; i++) {
		free(rs->r[i].text);
		json_decref(rs->r[i].o);
	}
	rs->n = 0;
}

static void replicas_free(struct replicas *rs)
{
	replicas_clear(rs);
	free(rs->r);
	rs->r = NULL;
}

/* The size the agent reported for output name, or -1. */
static double reported_bytes(const json_t *ev, const char *name)
{
	const json_t *v;
	size_t i;

	json_array_foreach (json_object_get(ev, "outputs"), i, v) {
		const json_t *by = json_object_get(v, "bytes");
		if (is(json_string_value(json_object_get(v, "name")), name) &&
		    json_is_number(by) && json_number_value(by) >= 0)
			return json_number_value(by);
	}
	return -1;
}

static int replicas_build(struct mer_broker *b, const json_t *rec,
			  const char *stage, const char *site, const json_t *ev,
			  long long now, struct replicas *rs)
{
	const char *job = json_string_value(json_object_get(rec, "id"));
	const json_t *sp = NULL, *v, *out;
	size_t i;

	json_array_foreach (
	    json_object_get(json_object_get(rec, "spec"), "stages"), i, v)
		if (is(json_string_value(json_object_get(v, "name")), stage))
			sp = v;
	if (!json_array_size(json_object_get(sp, "outputs")))
		return 0;
	if (!rs->r && !(rs->r = calloc(MER_JOB_MAX_DATASETS, sizeof(*rs->r))))
		return MER_ENOMEM;
	json_array_foreach (json_object_get(sp, "outputs"), i, out) {
		const char *name =
		    json_string_value(json_object_get(out, "name"));
		const json_t *tags = json_object_get(out, "tags");
		double got;
		struct replica *r;

		if (!name)
			continue;
		if (rs->n == MER_JOB_MAX_DATASETS)
			return MER_ETOOBIG; /* not a validated job */
		got = reported_bytes(ev, name);
		r = &rs->r[rs->n];
		if (!mer_store_key(b->store, r->key, sizeof(r->key),
				   "replicas/%s/%s", site, name))
			return MER_ETOOBIG;
		r->o = json_pack(
		    "{s:s, s:f, s:o, s:s, s:s?, s:s, s:I, s:s}", "name", name,
		    "bytes",
		    got >= 0 ? got
			     : json_number_value(json_object_get(out, "bytes")),
		    "tags",
		    json_is_array(tags) ? json_deep_copy(tags) : json_array(),
		    "site", site, "job", job, "stage", stage, "created_at",
		    (json_int_t)now, "bytes_from", got >= 0 ? "agent" : "job");
		r->text = r->o ? mer_json_dumps(r->o) : NULL;
		if (!r->text) {
			json_decref(r->o);
			r->o = NULL;
			return MER_ENOMEM;
		}
		rs->n++;
	}
	return 0;
}

/*
 * The store's extra ops for an event's update (mer_store_update_ops): when
 * the update marks the stage succeeded, its output replicas, written in
 * the same txn as the record. Called after every mutate_event that writes.
 */
static int event_extra(void *arg, const json_t *rec, struct mer_store_ops *ops)
{
	struct event_ctx *c = arg;
	int rv;

	if (!c->reps || c->stale || !is(c->event, "finished"))
		return 0;
	replicas_clear(c->reps);
	if ((rv = replicas_build(c->b, rec, c->stage, c->site, c->ev, c->now,
				 c->reps)))
		return rv;
	for (size_t i = 0; i < c->reps->n; i++)
		if ((rv = mer_store_ops_put(ops, c->reps->r[i].key,
					    c->reps->r[i].text)))
			return rv;
	return 0;
}

/* Replicas just stored: kept for the snapshots. */
static void replicas_note(struct mer_broker *b, const struct replicas *rs,
			  const char *job, const char *stage, const char *site)
{
	for (size_t i = 0; i < rs->n; i++)
		mer_placer_replica_note(b, site, rs->r[i].o);
	if (rs->n) {
		mer_info("output replicas stored",
			 "job=%s stage=%s site=%s n=%zu", job, stage, site,
			 rs->n);
		mer_broker_fed_invalidate(b);
	}
}

/* 0, or the store's error (MER_ENOTLEADER: fenced, the agent must send
 * the event to the leader). */
static int handle_event(struct mer_broker *b, const char *site,
			const json_t *ev, long long retry_limit)
{
	char job[MER_JOB_ID_SIZE], stage[128];
	const char *uid = json_string_value(json_object_get(ev, "stage"));
	struct replicas reps = {0};
	struct event_ctx c = {
	    .site = site,
	    .stage = stage,
	    .event = json_string_value(json_object_get(ev, "event")),
	    .exit_code =
		(int)json_integer_value(json_object_get(ev, "exit_code")),
	    .reason = json_string_value(json_object_get(ev, "reason")),
	    .now = (long long)time(NULL),
	    .retry_limit = retry_limit,
	    .b = b,
	    .ev = ev,
	    .reps = &reps};
	json_t *after = NULL;
	int rv;

	if (!uid || !c.event ||
	    parse_uid(uid, job, stage, sizeof(stage), &c.attempt))
		return 0;
	/* The stage's outputs are stored with the record that says it
	 * succeeded (event_extra), or not at all. */
	rv = mer_store_update_ops(b->store, job, mutate_event, event_extra, &c,
				  &after);
	if (rv == 0 && c.stale && is(c.event, "started")) {
		/* The site came back with a copy the broker gave up on. */
		queue_cancel(b, site, uid);
		mer_info("stale stage cancelled", "stage=%s site=%s", uid,
			 site);
	}
	if (rv == 0 && after && c.stale)
		mer_info("stale copy ended", "stage=%s site=%s how=%s", uid,
			 site, c.event);
	if (rv == 0 && after && !c.stale) {
		mer_placer_note(b, after);
		mer_info("stage event", "stage=%s site=%s event=%s", uid, site,
			 c.event);
		if (c.replace)
			mer_placer_enqueue(b, job);
		if (is(c.event, "finished") && c.changed) {
			replicas_note(b, &reps, job, stage, site);
			history_record(b, after, stage, site);
		}
		/* A failed job: its other live stages get cancels. */
		if (is(json_string_value(json_object_get(after, "state")),
		       MER_ST_FAILED))
			mer_dispatch_resend(b, after);
		mer_dispatch_job(b, job);
	}
	json_decref(after);
	replicas_free(&reps);
	return rv;
}

static void stale_add(struct mer_broker *b, const char *site, json_t *uids);
static void stale_remove(struct mer_broker *b, const char *site,
			 const char *uid);

/* An agent's answer to the cancel of a copy the broker gave up on ends
 * that copy's "stale" entry (the agent has stopped it, or never had it),
 * and its persisted cancel (site-stale/) is no longer needed. */
static void cancel_answered(struct mer_broker *b, const char *site,
			    const json_t *res, long long limit)
{
	const char *cid = json_string_value(json_object_get(res, "command"));
	const char *h = cid ? strrchr(cid, '#') : NULL;
	char uid[200];

	if (!h || strcmp(h, "#cancel") != 0 || (size_t)(h - cid) >= sizeof(uid))
		return;
	snprintf(uid, sizeof(uid), "%.*s", (int)(h - cid), cid);
	json_t *ev = json_pack("{s:s, s:s}", "stage", uid, "event",
			       json_is_true(json_object_get(res, "ok"))
				   ? "cancel acknowledged"
				   : "not held by the agent");
	if (ev)
		handle_event(b, site, ev, limit);
	json_decref(ev);
	stale_remove(b, site, uid);
}

/* ---- preemption ------------------------------------------------------------
 */

struct preempt_ctx {
	const char *stage, *site, *by;
	long long now;
	int held; /* the victim was dispatched or running: cancel its copy */
	long long attempt;
};

static int mutate_preempt(void *arg, json_t *rec)
{
	struct preempt_ctx *c = arg;
	json_t *s = stage_named(rec, c->stage);
	char why[300];

	if (!s || terminal(json_string_value(json_object_get(rec, "state"))) ||
	    json_is_true(json_object_get(s, "cancel_requested")) ||
	    !is(json_string_value(json_object_get(s, "site")), c->site))
		return MER_ECANCELED;
	const char *st = json_string_value(json_object_get(s, "state"));
	if (!is(st, MER_ST_PLACED) && !is(st, MER_ST_DISPATCHED) &&
	    !is(st, MER_ST_RUNNING))
		return MER_ECANCELED;
	c->held = !is(st, MER_ST_PLACED);
	c->attempt = json_integer_value(json_object_get(s, "attempts"));
	snprintf(why, sizeof(why),
		 "preempted at %s by %s; waiting to be placed again", c->site,
		 c->by);
	to_pending(s, why, c->held, c->now);
	json_object_set_new(s, "preempted_by", json_string(c->by));
	json_object_set_new(
	    s, "preemptions",
	    json_integer(json_integer_value(json_object_get(s, "preemptions")) +
			 1));
	mer_dispatch_job_state(rec, c->now);
	return 0;
}

int mer_dispatch_preempt(struct mer_broker *b, const char *job,
			 const char *stage, const char *site, const char *by)
{
	struct preempt_ctx c = {.stage = stage,
				.site = site,
				.by = by,
				.now = (long long)time(NULL)};
	json_t *after = NULL;
	int rv = mer_store_update(b->store, job, mutate_preempt, &c, &after);

	if (rv == 0 && after) {
		mer_placer_note(b, after);
		if (c.held) {
			char uid[200];
			stage_uid(uid, sizeof(uid), job, stage, c.attempt);
			/* Stored first, so that a broker restart before the
			 * agent takes it still sends it (watch_seen). */
			json_t *one = json_pack("[s]", uid);
			stale_add(b, site, one);
			json_decref(one);
			queue_cancel(b, site, uid);
		}
		mer_info("stage preempted", "job=%s stage=%s site=%s by=%s",
			 job, stage, site, by);
		mer_placer_enqueue(b, job);
	}
	json_decref(after);
	return rv;
}

/* ---- lost sites ------------------------------------------------------------
 */

struct watched {
	char site[MER_LINK_NAME_MAX];
	long long seen_ms; /* monotonic: last summary, or when first watched */
	int lost;
	int checked; /* etcd's lost mark looked at since this broker started */
	/* The etcd mark (site-status "lost") follows "lost" through one
	 * writer at a time (lost_mark_sync): */
	int writing; /* a thread is writing the mark */
	int dirty;   /* "lost" changed since that write began, or a write
			failed: etcd may not hold it */
};

struct site_watch {
	pthread_mutex_t mu;
	struct watched *w;
	size_t n, cap;
	/* Test hook (MERIDIAN_TEST_LOST_MARK_DELAY_MS): how long a lost
	 * mark waits before it is written, which opens the window of a
	 * report racing it wide enough for a test to hit. 0 in use. */
	long lost_delay_ms;
};

static long long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* The entry of site, or NULL; mu held. */
static struct watched *watch_get(struct site_watch *w, const char *site)
{
	for (size_t i = 0; i < w->n; i++)
		if (strcmp(w->w[i].site, site) == 0)
			return &w->w[i];
	return NULL;
}

/* The entry of site (added when absent); mu held. */
static struct watched *watch_find(struct site_watch *w, const char *site)
{
	struct watched *found = watch_get(w, site);

	if (found)
		return found;
	if (w->n == w->cap) {
		size_t nc = w->cap ? 2 * w->cap : 16;
		void *p = realloc(w->w, nc * sizeof(*w->w));
		if (!p)
			return NULL;
		w->w = p;
		w->cap = nc;
	}
	struct watched *e = &w->w[w->n++];
	memset(e, 0, sizeof(*e));
	snprintf(e->site, sizeof(e->site), "%s", site);
	e->seen_ms = mono_ms();
	return e;
}

void mer_dispatch_watch(struct mer_broker *b, const char *site)
{
	if (!b->watch || !site || !site[0])
		return;
	pthread_mutex_lock(&b->watch->mu);
	watch_find(b->watch, site);
	pthread_mutex_unlock(&b->watch->mu);
}

/* Cancels that must reach a site ("<p>/site-stale/<site>": a JSON array
 * of stage ids): copies a lost site may still run and preemption victims.
 * Stored before they are queued, removed only when the agent answers, so
 * they outlive a broker restart. */
static void stale_add(struct mer_broker *b, const char *site, json_t *uids)
{
	char key[KEY_MAX];

	if (!json_array_size(uids) ||
	    !mer_store_key(b->store, key, sizeof(key), "site-stale/%s", site))
		return;
	for (int tries = 0; tries < 8; tries++) {
		struct mer_etcd_kv kv = {0};
		json_t *list = NULL, *v;
		int64_t mod = 0;
		size_t i;
		int rv = mer_etcd_get(b->etcd, key, strlen(key), &kv, NULL);
		if (rv == 0) {
			list = json_loadb(kv.value, kv.value_len, 0, NULL);
			mod = kv.mod_revision;
		} else if (rv != MER_ENOTFOUND) {
			return;
		}
		mer_etcd_kv_clear(&kv);
		if (!json_is_array(list)) {
			json_decref(list);
			list = json_array();
		}
		size_t had = json_array_size(list);
		json_array_foreach (uids, i, v) {
			int dup = 0;
			for (size_t k = 0; k < json_array_size(list) && !dup;
			     k++)
				dup = json_equal(json_array_get(list, k), v);
			if (!dup)
				json_array_append(list, v);
		}
		if (json_array_size(list) == had) {
			json_decref(list); /* all there already */
			return;
		}
		char *text = mer_json_dumps(list);
		json_decref(list);
		if (!text)
			return;
		rv = mer_etcd_put_if_mod_revision(b->etcd, key, strlen(key),
						  text, strlen(text), 0, mod,
						  NULL);
		free(text);
		if (rv != MER_ECOMPARE)
			return;
	}
}

/* Drops uid from "<p>/site-stale/<site>" (the key goes with its last). */
static void stale_remove(struct mer_broker *b, const char *site,
			 const char *uid)
{
	char key[KEY_MAX];

	if (!mer_store_key(b->store, key, sizeof(key), "site-stale/%s", site))
		return;
	for (int tries = 0; tries < 8; tries++) {
		struct mer_etcd_kv kv = {0};
		json_t *list = NULL, *keep = json_array(), *v;
		size_t i;
		int found = 0, rv;

		if (!keep ||
		    mer_etcd_get(b->etcd, key, strlen(key), &kv, NULL) != 0) {
			json_decref(keep);
			mer_etcd_kv_clear(&kv);
			return;
		}
		list = json_loadb(kv.value, kv.value_len, 0, NULL);
		json_array_foreach (list, i, v) {
			if (is(json_string_value(v), uid))
				found = 1;
			else
				json_array_append(keep, v);
		}
		json_decref(list);
		char *text = found && json_array_size(keep)
				 ? mer_json_dumps(keep)
				 : NULL;
		if (!found)
			rv = 0;
		else if (!json_array_size(keep))
			rv = mer_etcd_delete_if_mod_revision(
			    b->etcd, key, strlen(key), kv.mod_revision, NULL);
		else
			rv = text ? mer_etcd_put_if_mod_revision(
					b->etcd, key, strlen(key), text,
					strlen(text), 0, kv.mod_revision, NULL)
				  : MER_ENOMEM;
		free(text);
		json_decref(keep);
		mer_etcd_kv_clear(&kv);
		if (rv != MER_ECOMPARE)
			return;
	}
}

/* Queues the cancels stored for site: on its first report since this
 * broker started (what an earlier broker stored: preemption victims,
 * copies abandoned on a lost site), and when a lost site reports again.
 * Each entry goes when the agent answers (cancel_answered); a repeat is
 * harmless (queued ids are deduplicated, the agent knows stage ids). */
static void stale_resend(struct mer_broker *b, const char *site)
{
	char key[KEY_MAX];
	struct mer_etcd_kv kv = {0};
	json_t *list = NULL, *v;
	size_t i;

	if (!mer_store_key(b->store, key, sizeof(key), "site-stale/%s", site) ||
	    mer_etcd_get(b->etcd, key, strlen(key), &kv, NULL) != 0) {
		mer_etcd_kv_clear(&kv);
		return;
	}
	list = json_loadb(kv.value, kv.value_len, 0, NULL);
	json_array_foreach (list, i, v) {
		queue_cancel(b, site, json_string_value(v));
		mer_info("stored cancel queued", "stage=%s site=%s",
			 json_string_value(v), site);
	}
	json_decref(list);
	mer_etcd_kv_clear(&kv);
}

struct lost_ctx {
	const char *site;
	long long now;
	json_t *uids; /* copies abandoned, to cancel */
	int moved;
};

/* Every unfinished stage of the lost site back to pending. */
static int mutate_lost(void *arg, json_t *rec)
{
	struct lost_ctx *c = arg;
	const char *id = json_string_value(json_object_get(rec, "id"));
	json_t *s;
	size_t i;
	char why[200];

	c->moved = 0;
	if (terminal(json_string_value(json_object_get(rec, "state"))))
		return MER_ECANCELED;
	snprintf(why, sizeof(why),
		 "site %s was lost; waiting to be placed "
		 "again",
		 c->site);
	json_array_foreach (json_object_get(rec, "stages"), i, s) {
		const char *st = json_string_value(json_object_get(s, "state"));
		if (!is(json_string_value(json_object_get(s, "site")),
			c->site) ||
		    !(is(st, MER_ST_PLACED) || is(st, MER_ST_DISPATCHED) ||
		      is(st, MER_ST_RUNNING)))
			continue;
		int held = !is(st, MER_ST_PLACED);
		if (held) {
			char uid[200];
			stage_uid(
			    uid, sizeof(uid), id,
			    json_string_value(json_object_get(s, "name")),
			    json_integer_value(json_object_get(s, "attempts")));
			json_array_append_new(c->uids, json_string(uid));
		}
		if (json_is_true(json_object_get(s, "cancel_requested"))) {
			/* Being cancelled anyway: nothing to re-place. */
			json_object_set_new(s, "state",
					    json_string(MER_ST_CANCELLED));
			json_object_set_new(s, "finished_at",
					    json_integer(c->now));
		} else {
			to_pending(s, why, held, c->now);
		}
		c->moved++;
	}
	if (!c->moved)
		return MER_ECANCELED;
	mer_dispatch_job_state(rec, c->now);
	return 0;
}

struct lost_scan {
	const char *site;
	char (*ids)[MER_JOB_ID_SIZE];
	size_t n, cap;
};

static void lost_scan_one(void *arg, const json_t *rec)
{
	struct lost_scan *ls = arg;
	const char *id = json_string_value(json_object_get(rec, "id"));
	const json_t *s;
	size_t i;

	if (!id || terminal(json_string_value(json_object_get(rec, "state"))))
		return;
	json_array_foreach (json_object_get(rec, "stages"), i, s) {
		const char *st = json_string_value(json_object_get(s, "state"));
		if (!is(json_string_value(json_object_get(s, "site")),
			ls->site) ||
		    terminal(st) || is(st, MER_ST_PENDING))
			continue;
		if (ls->n == ls->cap) {
			size_t nc = ls->cap ? 2 * ls->cap : 64;
			void *p = realloc(ls->ids, nc * sizeof(*ls->ids));
			if (!p)
				return;
			ls->ids = p;
			ls->cap = nc;
		}
		snprintf(ls->ids[ls->n++], MER_JOB_ID_SIZE, "%s", id);
		return;
	}
}

/*
 * Writes site's lost mark until etcd holds what memory says ("lost" of its
 * watch entry). The lost decision (placer thread) and the site's next
 * report (link thread) race: written by each thread on its own, a report
 * just as the site is marked lost could be stored before the mark and the
 * site stay lost for ever while it reports. Here one thread at a time
 * writes a site's mark; a change made while it writes (dirty) is written
 * by that same thread after its write, so etcd ends with the last
 * transition. A failed write stays dirty and mer_dispatch_check_sites
 * retries it.
 */
static void lost_mark_sync(struct mer_broker *b, const char *site)
{
	struct site_watch *w = b->watch;
	struct watched *e;

	pthread_mutex_lock(&w->mu);
	e = watch_get(w, site);
	if (!e || e->writing) {
		if (e)
			e->dirty = 1;
		pthread_mutex_unlock(&w->mu);
		return;
	}
	e->writing = 1;
	do {
		int want = e->lost, rv;
		long delay = w->lost_delay_ms;
		e->dirty = 0;
		pthread_mutex_unlock(&w->mu);
		if (want && delay > 0) {
			struct timespec ts = {delay / 1000,
					      (delay % 1000) * 1000000L};
			nanosleep(&ts, NULL);
		}
		rv = mer_broker_site_flag(b, site, "lost", want);
		if (rv)
			mer_warn(want ? "site lost mark not stored"
				      : "site lost mark not cleared",
				 "site=%s err=%s", site, mer_errname(rv));
		mer_broker_fed_invalidate(b);
		pthread_mutex_lock(&w->mu);
		/* entries move when the table grows, and go when the
		 * term ends (mer_dispatch_reset): look it up again */
		e = watch_get(w, site);
		if (e && rv) {
			/* left to the next check (etcd trouble); stepping
			 * down ends the retries with the watch table */
			e->writing = 0;
			e->dirty = 1;
			e = NULL;
		}
	} while (e && e->dirty);
	if (e)
		e->writing = 0;
	pthread_mutex_unlock(&w->mu);
}

/*
 * A site fell silent: marked lost (the federation snapshot then calls it
 * down, so nothing new goes there), and the stages it had return to
 * pending. Finding them takes one scan of the jobs, paid once per loss.
 */
static void site_lost(struct mer_broker *b, const char *site)
{
	struct lost_scan ls = {.site = site};
	struct lost_ctx c = {.site = site, .now = (long long)time(NULL)};
	size_t moved = 0;
	int rv;

	mer_warn("site lost", "site=%s silent_ms=%lld", site,
		 (long long)(b->cfg.lost_after * b->cfg.report_interval_ms));
	/* A report since the decision has cleared "lost" already: then
	 * this writes (or leaves) the site back, never lost. */
	lost_mark_sync(b, site);
	if ((rv = mer_store_scan(b->store, lost_scan_one, &ls)))
		mer_warn("job scan failed", "err=%s", mer_errname(rv));
	c.uids = json_array();
	for (size_t i = 0; c.uids && i < ls.n; i++) {
		json_t *after = NULL;
		if (mer_store_update(b->store, ls.ids[i], mutate_lost, &c,
				     &after) == 0 &&
		    after && c.moved) {
			moved += (size_t)c.moved;
			mer_placer_note(b, after);
			mer_placer_enqueue(b, ls.ids[i]);
		}
		json_decref(after);
	}
	stale_add(b, site, c.uids);
	/* Queued now as well: they wait for the site's next session. */
	for (size_t i = 0; i < json_array_size(c.uids); i++)
		queue_cancel(b, site,
			     json_string_value(json_array_get(c.uids, i)));
	mer_info("stages of lost site returned to pending",
		 "site=%s stages=%zu", site, moved);
	json_decref(c.uids);
	free(ls.ids);
}

/* The site reports again after it was lost: no longer lost, and told to
 * cancel the copies it may still run. The cancels are those stored in
 * "site-stale/<site>" (stale_resend): each stays stored until the agent
 * answers it (cancel_answered), so a broker restart before the agent has
 * taken it sends it again (watch_seen) instead of losing it. */
static void site_back(struct mer_broker *b, const char *site)
{
	mer_info("site back", "site=%s", site);
	lost_mark_sync(b, site);
	stale_resend(b, site);
}

static int site_marked_lost(struct mer_broker *b, const char *site)
{
	char key[KEY_MAX];
	struct mer_etcd_kv kv = {0};
	int lost = 0;

	if (mer_store_key(b->store, key, sizeof(key), "site-status/%s", site) &&
	    mer_etcd_get(b->etcd, key, strlen(key), &kv, NULL) == 0) {
		json_t *o = json_loadb(kv.value, kv.value_len, 0, NULL);
		lost = json_is_true(json_object_get(o, "lost"));
		json_decref(o);
	}
	mer_etcd_kv_clear(&kv);
	return lost;
}

static void watch_seen(struct mer_broker *b, const char *site)
{
	int was_lost = 0, check = 0;

	if (!b->watch)
		return;
	pthread_mutex_lock(&b->watch->mu);
	struct watched *e = watch_find(b->watch, site);
	if (e) {
		e->seen_ms = mono_ms();
		was_lost = e->lost;
		check = !e->checked;
		e->checked = 1;
		e->lost = 0;
	}
	pthread_mutex_unlock(&b->watch->mu);
	/* A site lost before this broker started is known from etcd. */
	if (check && !was_lost)
		was_lost = site_marked_lost(b, site);
	if (was_lost)
		site_back(b, site);
	else if (check)
		stale_resend(b, site);
}

void mer_dispatch_check_sites(struct mer_broker *b)
{
	long long limit = b->cfg.lost_after * b->cfg.report_interval_ms;
	long long now = mono_ms();
	char(*lost)[MER_LINK_NAME_MAX] = NULL,
	(*retry)[MER_LINK_NAME_MAX] = NULL;
	size_t n = 0, nretry = 0;

	if (!b->watch || limit <= 0)
		return;
	pthread_mutex_lock(&b->watch->mu);
	for (size_t i = 0; i < b->watch->n; i++) {
		struct watched *e = &b->watch->w[i];
		if (e->lost || now - e->seen_ms <= limit)
			continue;
		void *p = realloc(lost, (n + 1) * sizeof(*lost));
		if (!p)
			break;
		lost = p;
		e->lost = 1;
		e->checked = 1;
		snprintf(lost[n++], MER_LINK_NAME_MAX, "%s", e->site);
	}
	/* Marks a failed write left behind (not being written now). */
	for (size_t i = 0; i < b->watch->n; i++) {
		struct watched *e = &b->watch->w[i];
		if (!e->dirty || e->writing)
			continue;
		void *p = realloc(retry, (nretry + 1) * sizeof(*retry));
		if (!p)
			break;
		retry = p;
		snprintf(retry[nretry++], MER_LINK_NAME_MAX, "%s", e->site);
	}
	pthread_mutex_unlock(&b->watch->mu);
	for (size_t i = 0; i < n; i++)
		site_lost(b, lost[i]);
	for (size_t i = 0; i < nretry; i++)
		lost_mark_sync(b, retry[i]);
	free(lost);
	free(retry);
}

static void reports_free(struct mer_broker *b);

void mer_dispatch_free_watch(struct mer_broker *b)
{
	reports_free(b);
	if (!b->watch)
		return;
	pthread_mutex_destroy(&b->watch->mu);
	free(b->watch->w);
	free(b->watch);
	b->watch = NULL;
}

/* ---- site reports -----------------------------------------------------------
 *
 * A summary is kept in memory when it arrives (cheap, on the link's
 * callback thread) and written to "<p>/site-reports/<site>" by a flusher
 * thread, many sites per txn. The federation snapshot reads the memory
 * copy, so a site's heartbeat is when the broker received its summary,
 * however far behind the etcd writes are; etcd's copy is for a restarted
 * broker (at most one flush interval old).
 */

#define REPORT_FLUSH_MS 250
/* Puts per txn: etcd's default --max-txn-ops, so any etcd takes it. */
#define REPORT_TXN_OPS 128

struct report_entry {
	char site[MER_LINK_NAME_MAX];
	json_t *snap;	  /* the summary without last_heartbeat; not changed */
	long long at;	  /* wall clock, s: when it arrived */
	uint64_t seq;	  /* bumped by every arrival */
	uint64_t flushed; /* seq in etcd (0: none yet) */
};

struct site_reports {
	pthread_mutex_t mu;
	pthread_cond_t cv;
	struct report_entry *e;
	size_t n, cap, ndirty;
	int stop, running;
	pthread_t th;
};

static struct site_reports *reports_get(struct mer_broker *b)
{
	if (!b->reports) {
		struct site_reports *r = calloc(1, sizeof(*r));
		if (!r)
			return NULL;
		pthread_mutex_init(&r->mu, NULL);
		pthread_cond_init(&r->cv, NULL);
		b->reports = r;
	}
	return b->reports;
}

/* The entry of site (added when absent); mu held. */
static struct report_entry *report_find(struct site_reports *r,
					const char *site)
{
	for (size_t i = 0; i < r->n; i++)
		if (strcmp(r->e[i].site, site) == 0)
			return &r->e[i];
	if (r->n == r->cap) {
		size_t nc = r->cap ? 2 * r->cap : 64;
		void *p = realloc(r->e, nc * sizeof(*r->e));
		if (!p)
			return NULL;
		r->e = p;
		r->cap = nc;
	}
	struct report_entry *e = &r->e[r->n++];
	memset(e, 0, sizeof(*e));
	snprintf(e->site, sizeof(e->site), "%s", site);
	return e;
}

/* Keeps site's summary; the placer is kicked only when it changed (a
 * heartbeat alone frees no capacity). */
static int report_note(struct mer_broker *b, const char *site,
		       const json_t *site_json)
{
	struct site_reports *r = reports_get(b);
	json_t *snap = json_deep_copy(site_json), *old = NULL;
	int changed = 1, rv = 0;

	if (!json_is_object(snap)) {
		json_decref(snap);
		return MER_EPARSE;
	}
	if (!r) {
		json_decref(snap);
		return MER_ENOMEM;
	}
	/* The session says who this is, not the report. */
	json_object_set_new(snap, "name", json_string(site));
	json_object_del(snap, "last_heartbeat");
	pthread_mutex_lock(&r->mu);
	struct report_entry *e = report_find(r, site);
	if (!e) {
		rv = MER_ENOMEM;
	} else {
		if (e->snap && json_equal(e->snap, snap))
			changed = 0;
		old = e->snap;
		e->snap = snap;
		snap = NULL;
		e->at = (long long)time(NULL);
		if (e->seq++ == e->flushed)
			r->ndirty++;
		if (r->ndirty >= REPORT_TXN_OPS)
			pthread_cond_signal(&r->cv);
	}
	pthread_mutex_unlock(&r->mu);
	json_decref(old);
	json_decref(snap);
	if (rv == 0 && changed)
		mer_placer_kick(b);
	return rv;
}

json_t *mer_dispatch_reports(struct mer_broker *b)
{
	struct site_reports *r = b->reports;
	json_t *out = json_object();

	if (!out || !r)
		return out;
	pthread_mutex_lock(&r->mu);
	for (size_t i = 0; i < r->n; i++) {
		json_t *s = r->e[i].snap ? json_deep_copy(r->e[i].snap) : NULL;
		if (!s)
			continue;
		json_object_set_new(s, "last_heartbeat",
				    json_integer(r->e[i].at));
		json_object_set_new(out, r->e[i].site, s);
	}
	pthread_mutex_unlock(&r->mu);
	return out;
}

struct report_put {
	char site[MER_LINK_NAME_MAX];
	json_t *snap;
	long long at;
	char key[KEY_MAX];
	char *val;
	uint64_t seq;
};

/* Writes up to REPORT_TXN_OPS summaries per txn; what failed stays dirty
 * for the next flush. */
static void reports_flush(struct mer_broker *b)
{
	struct site_reports *r = b->reports;
	struct report_put *p = NULL;
	struct mer_etcd_op *ops = NULL;
	size_t n = 0;

	pthread_mutex_lock(&r->mu);
	if (r->ndirty)
		p = calloc(r->ndirty, sizeof(*p));
	for (size_t i = 0; p && i < r->n && n < r->ndirty; i++) {
		struct report_entry *e = &r->e[i];
		if (e->seq == e->flushed || !e->snap)
			continue;
		/* Dumped outside the lock: entries are replaced, not
		 * changed, so a reference is a stable copy. */
		p[n].snap = json_incref(e->snap);
		p[n].at = e->at;
		snprintf(p[n].site, sizeof(p[n].site), "%s", e->site);
		p[n].seq = e->seq;
		n++;
	}
	pthread_mutex_unlock(&r->mu);
	for (size_t i = 0; i < n; i++) {
		json_t *s = json_deep_copy(p[i].snap);
		if (s)
			json_object_set_new(s, "last_heartbeat",
					    json_integer(p[i].at));
		p[i].val = s ? mer_json_dumps(s) : NULL;
		json_decref(s);
		json_decref(p[i].snap);
		p[i].snap = NULL;
	}
	/* An entry that could not be dumped stays dirty. */
	size_t m = 0;
	for (size_t i = 0; i < n; i++)
		if (p[i].val)
			p[m++] = p[i];
	n = m;
	if (n)
		ops = calloc(n, sizeof(*ops));
	for (size_t i = 0; ops && i < n; i++) {
		mer_store_key(b->store, p[i].key, sizeof(p[i].key),
			      "site-reports/%s", p[i].site);
		ops[i] = (struct mer_etcd_op){.type = MER_ETCD_OP_PUT,
					      .key = p[i].key,
					      .key_len = strlen(p[i].key),
					      .value = p[i].val,
					      .value_len = strlen(p[i].val)};
	}
	for (size_t at = 0; ops && at < n; at += REPORT_TXN_OPS) {
		size_t k = n - at < REPORT_TXN_OPS ? n - at : REPORT_TXN_OPS;
		int rv = mer_etcd_txn(b->etcd, NULL, 0, ops + at, k, NULL, 0,
				      NULL, NULL);
		if (rv) {
			mer_warn("site reports not stored", "sites=%zu err=%s",
				 k, mer_errname(rv));
			continue;
		}
		pthread_mutex_lock(&r->mu);
		for (size_t i = at; i < at + k; i++) {
			struct report_entry *e = report_find(r, p[i].site);
			if (!e || e->flushed == e->seq)
				continue;
			/* A newer arrival since the copy stays dirty. */
			if (e->seq == p[i].seq)
				r->ndirty--;
			e->flushed = p[i].seq;
		}
		pthread_mutex_unlock(&r->mu);
	}
	for (size_t i = 0; p && i < n; i++)
		free(p[i].val);
	free(p);
	free(ops);
}

static void *reports_main(void *arg)
{
	struct mer_broker *b = arg;
	struct site_reports *r = b->reports;

	pthread_mutex_lock(&r->mu);
	while (!r->stop) {
		struct timespec ts;
		clock_gettime(CLOCK_REALTIME, &ts);
		ts.tv_nsec += (long)REPORT_FLUSH_MS * 1000000L;
		ts.tv_sec += ts.tv_nsec / 1000000000L;
		ts.tv_nsec %= 1000000000L;
		while (!r->stop && r->ndirty < REPORT_TXN_OPS &&
		       pthread_cond_timedwait(&r->cv, &r->mu, &ts) == 0)
			;
		if (!r->ndirty)
			continue;
		pthread_mutex_unlock(&r->mu);
		reports_flush(b);
		pthread_mutex_lock(&r->mu);
	}
	pthread_mutex_unlock(&r->mu);
	return NULL;
}

static int reports_start(struct mer_broker *b)
{
	struct site_reports *r = reports_get(b);

	if (!r)
		return MER_ENOMEM;
	if (r->running)
		return 0;
	r->stop = 0;
	if (pthread_create(&r->th, NULL, reports_main, b))
		return MER_ENOMEM;
	r->running = 1;
	return 0;
}

/* Stops the flusher after a last flush (the link is stopped first). */
static void reports_stop(struct mer_broker *b)
{
	struct site_reports *r = b->reports;

	if (!r || !r->running)
		return;
	pthread_mutex_lock(&r->mu);
	r->stop = 1;
	pthread_cond_signal(&r->cv);
	pthread_mutex_unlock(&r->mu);
	pthread_join(r->th, NULL);
	r->running = 0;
	reports_flush(b);
}

static void reports_free(struct mer_broker *b)
{
	struct site_reports *r = b->reports;

	if (!r)
		return;
	for (size_t i = 0; i < r->n; i++)
		json_decref(r->e[i].snap);
	free(r->e);
	pthread_mutex_destroy(&r->mu);
	pthread_cond_destroy(&r->cv);
	free(r);
	b->reports = NULL;
}

void mer_dispatch_reset(struct mer_broker *b)
{
	struct site_reports *r = b->reports;

	if (b->watch) {
		pthread_mutex_lock(&b->watch->mu);
		b->watch->n = 0;
		pthread_mutex_unlock(&b->watch->mu);
	}
	if (r) {
		pthread_mutex_lock(&r->mu);
		for (size_t i = 0; i < r->n; i++)
			json_decref(r->e[i].snap);
		r->n = 0;
		r->ndirty = 0;
		pthread_mutex_unlock(&r->mu);
	}
}

/* ---- link hooks ------------------------------------------------------------
 */

static int hook_check_key(void *arg, const uint8_t pk[MER_KEY_BYTES],
			  char site[MER_LINK_NAME_MAX])
{
	struct mer_broker *b = arg;

	return mer_membership_check_key(b->members, pk, site);
}

/* A site joining again after a revoke (a new token, a new key: an admin
 * let it back) loses the revoked mark of its status record, which would
 * keep it out of every snapshot, and starts without outputs: the revoke
 * deleted them in etcd, and the placer forgets them here as well (a
 * revoke through another broker reaches this one's memory only so). */
static void site_readmit(struct mer_broker *b, const char *site)
{
	char key[KEY_MAX];
	struct mer_etcd_kv kv = {0};
	int revoked = 0, rv;

	if (mer_store_key(b->store, key, sizeof(key), "site-status/%s", site) &&
	    mer_etcd_get(b->etcd, key, strlen(key), &kv, NULL) == 0) {
		json_t *o = json_loadb(kv.value, kv.value_len, 0, NULL);
		revoked = json_is_true(json_object_get(o, "revoked"));
		json_decref(o);
	}
	mer_etcd_kv_clear(&kv);
	if (!revoked)
		return;
	mer_placer_replica_forget(b, site);
	if ((rv = mer_broker_site_flag(b, site, "revoked", 0)))
		mer_warn("site revoked mark not cleared", "site=%s err=%s",
			 site, mer_errname(rv));
	else
		mer_info("site readmitted", "site=%s", site);
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
		site_readmit(b, site);
		mer_broker_fed_invalidate(b);
	}
	return rv;
}

static int hook_report(void *arg, const char *site, json_t *report)
{
	struct mer_broker *b = arg;
	const char *type = json_string_value(json_object_get(report, "type"));

	if (is(type, "summary")) {
		int rv = report_note(b, site, json_object_get(report, "site"));
		if (rv)
			return rv;
		watch_seen(b, site);
		return 0;
	}
	if (is(type, "events")) {
		struct mer_policy_ref *pr = mer_broker_policy_get(b);
		long long limit = pr ? pr->pol->retry_limit : 0;
		size_t i;
		json_t *ev;

		mer_broker_policy_put(b, pr);
		json_array_foreach (json_object_get(report, "results"), i, ev)
			cancel_answered(b, site, ev, limit);
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
		int fenced = 0;
		json_array_foreach (json_object_get(report, "events"), i, ev)
			fenced |=
			    handle_event(b, site, ev, limit) == MER_ENOTLEADER;
		/* Not acknowledged by a deposed leader: the agent keeps the
		 * events and takes them to the leader (they are idempotent,
		 * so those stored already do no harm). */
		return fenced ? MER_ENOTLEADER : 0;
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
	if (!b->watch) {
		b->watch = calloc(1, sizeof(*b->watch));
		if (!b->watch) {
			mer_keypair_wipe(&kp);
			return MER_ENOMEM;
		}
		pthread_mutex_init(&b->watch->mu, NULL);
		const char *d = getenv("MERIDIAN_TEST_LOST_MARK_DELAY_MS");
		char *end = NULL;
		long ms = d ? strtol(d, &end, 10) : 0;
		if (d && end != d && !*end && ms > 0 && ms <= 60000) {
			b->watch->lost_delay_ms = ms;
			mer_warn("test hook: lost marks delayed", "ms=%ld", ms);
		}
	}
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
	if ((rv = reports_start(b))) {
		snprintf(err, errlen, "site report flusher: %s",
			 mer_strerror(rv));
		return rv;
	}
	return 0;
}

void mer_dispatch_stop(struct mer_broker *b)
{
	mer_link_server_stop(b->link);
	b->link = NULL;
	reports_stop(b);
}

/* ---- report references (dispatch.h) ----------------------------------------
 * For the placer's snapshot: references instead of mer_dispatch_reports'
 * deep copies, taken under the lock (cheap: the link's thread waits on
 * it), so that unchanged summaries cost neither a copy nor a new
 * validation. */

int mer_dispatch_report_refs(struct mer_broker *b, struct mer_report_ref **out,
			     size_t *n)
{
	struct site_reports *r = b->reports;
	struct mer_report_ref *a = NULL;
	size_t k = 0;

	*out = NULL;
	*n = 0;
	if (!r)
		return 0;
	pthread_mutex_lock(&r->mu);
	if (r->n && !(a = calloc(r->n, sizeof(*a)))) {
		pthread_mutex_unlock(&r->mu);
		return MER_ENOMEM;
	}
	for (size_t i = 0; i < r->n; i++) {
		if (!r->e[i].snap)
			continue;
		memcpy(a[k].site, r->e[i].site, sizeof(a[k].site));
		a[k].snap = json_incref(r->e[i].snap);
		a[k].at = r->e[i].at;
		k++;
	}
	pthread_mutex_unlock(&r->mu);
	*out = a;
	*n = k;
	return 0;
}

void mer_dispatch_report_refs_free(struct mer_report_ref *refs, size_t n)
{
	for (size_t i = 0; refs && i < n; i++)
		json_decref(refs[i].snap);
	free(refs);
}
