/*
 * The Slurm adapter, through slurmrestd: the OpenAPI version is found at
 * run time (GET /openapi), over a unix socket (rest_auth/local) or HTTP
 * with X-SLURM-USER-NAME / X-SLURM-USER-TOKEN. Capacity from nodes
 * (cpus, alloc_cpus, memory, gres/gres_used per GPU model, state) grouped
 * by partition, demand from pending jobs; a stage becomes a batch job named
 * "mer:<stage id>" so a restarted agent finds it. Shapes follow v0.0.38
 * (Debian 12's 22.05); the numbers-as-objects and environment-as-list forms
 * of v0.0.39+ are read and written too, untested against a real cluster.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>

#include "common/err.h"
#include "common/log.h"
#include "site-agent/adapter.h"
#include "site-agent/config.h"
#include "site-agent/httpc.h"
#include "site-agent/kutil.h"

#define JOB_PREFIX "mer:"
/* The wait advertised when the demand does not fit: the soonest end of a
 * running job, bounded. Jobs without a time limit have an end_time a year
 * out (or "infinite"): they say nothing about when room frees up. */
#define WAIT_DEFAULT_S 3600.0
#define WAIT_CAP_S (24 * 3600.0)

struct slurm {
	const struct mer_agent_cfg *cfg;
	struct mer_agent_http http;
	char ver[16]; /* "v0.0.38"; "" until discovered */
	int minor;    /* 38 for v0.0.38 */
	int has_db;   /* /slurmdb/<ver>/job/{id} offered (accounting) */
};

static int slurm_open(const struct mer_agent_cfg *cfg, void **inst, char *err,
		      size_t errlen)
{
	struct slurm *s = calloc(1, sizeof(*s));
	const char *token = cfg->token;
	char *tok = NULL;
	int rv;

	if (!s)
		return MER_ENOMEM;
	s->cfg = cfg;
	/* scheduler.token_file (e.g. written by `scontrol token`) when no
	 * token is inline. */
	if ((!token || !*token) && cfg->token_file && *cfg->token_file) {
		if ((rv = mer_agent_read_token(cfg->token_file, &tok))) {
			snprintf(err, errlen,
				 "slurm: cannot read scheduler.token_file %s",
				 cfg->token_file);
			free(s);
			return rv;
		}
		token = tok;
	}
	if ((rv = mer_agent_http_init(&s->http, cfg->url, NULL, cfg->ca_file,
				      cfg->insecure, (long)cfg->timeout_ms)))
		goto fail_report;
	/* JWT auth over TCP; a unix socket uses rest_auth/local instead. */
	if (strncmp(cfg->url, "unix://", 7) != 0) {
		if ((cfg->user && *cfg->user &&
		     (rv = mer_agent_http_header(&s->http, "X-SLURM-USER-NAME",
						 cfg->user))) ||
		    (token && *token &&
		     (rv = mer_agent_http_header(&s->http, "X-SLURM-USER-TOKEN",
						 token))))
			goto fail_report;
	}
	mer_agent_free_token(tok);
	tok = NULL;
	if (cfg->api_version && *cfg->api_version) {
		int minor, end = 0;
		if (sscanf(cfg->api_version, "v0.0.%d%n", &minor, &end) != 1 ||
		    cfg->api_version[end] != '\0' || minor < 38 || minor > 99) {
			snprintf(err, errlen,
				 "slurm: scheduler.api_version must be "
				 "v0.0.NN with NN >= 38");
			rv = MER_EINVAL;
			goto clear_http;
		}
		snprintf(s->ver, sizeof(s->ver), "v0.0.%d", minor);
		s->minor = minor;
	}
	*inst = s;
	return 0;
fail_report:
	snprintf(err, errlen, "slurm: bad scheduler.url or credentials");
clear_http:
	mer_agent_free_token(tok);
	mer_agent_http_clear(&s->http);
	free(s);
	return rv;
}

/* Picks v0.0.39, else v0.0.38, from the "/slurm/v0.0.NN/" paths the
 * server's OpenAPI document lists: the shapes this adapter was tested
 * with. A newer version only through scheduler.api_version, since its
 * shapes may have moved. */
static int discover(struct slurm *s, char *err, size_t errlen)
{
	json_t *doc = NULL;
	const char *path;
	json_t *v;
	long st;
	int best = -1, newest = -1, dbs = 0, rv;

	if (s->ver[0])
		return 0;
	rv = mer_agent_http_do(&s->http, "GET", "/openapi", NULL, NULL, &st,
			       &doc, err, errlen);
	if (rv == MER_EREMOTE && st == 404)
		rv = mer_agent_http_do(&s->http, "GET", "/openapi/v3", NULL,
				       NULL, &st, &doc, err, errlen);
	if (rv)
		goto out_free_doc;
	json_object_foreach (json_object_get(doc, "paths"), path, v) {
		int minor;
		char tail[8];
		if (sscanf(path, "/slurmdb/v0.0.%d/job/%7s", &minor, tail) ==
		    2) {
			dbs |= minor == 38 ? 1 : minor == 39 ? 2 : 0;
			continue;
		}
		if (sscanf(path, "/slurm/v0.0.%d/%7s", &minor, tail) != 2)
			continue;
		if (minor > newest)
			newest = minor;
		if ((minor == 38 || minor == 39) && minor > best)
			best = minor;
	}
	if (best < 0) {
		if (newest > 39)
			snprintf(err, errlen,
				 "slurm: slurmrestd offers v0.0.%d but not the "
				 "tested v0.0.38/39; set scheduler.api_version "
				 "to \"v0.0.%d\" to try it",
				 newest, newest);
		else
			snprintf(err, errlen,
				 "slurm: slurmrestd offers no /slurm/v0.0.38 "
				 "or v0.0.39 API (is openapi/v0.0.38 "
				 "loaded?)");
		rv = newest < 0 ? MER_EPARSE : MER_EUNSUPPORTED;
		goto out_free_doc;
	}
	s->minor = best;
	s->has_db = (dbs & (best == 38 ? 1 : 2)) != 0;
	snprintf(s->ver, sizeof(s->ver), "v0.0.%d", best);
	mer_info("slurmrestd api found", "version=%s", s->ver);
out_free_doc:
	json_decref(doc);
	return rv;
}

static int call(struct slurm *s, const char *method, const char *rest,
		const json_t *body, json_t **reply, long *st, char *err,
		size_t errlen)
{
	char path[512];
	int rv;

	if ((rv = discover(s, err, errlen)))
		return rv;
	snprintf(path, sizeof(path), "/slurm/%s/%s", s->ver, rest);
	return mer_agent_http_do(&s->http, method, path, body, NULL, st, reply,
				 err, errlen);
}

/* A number, or v0.0.39+'s {"set": true, "infinite": false, "number": N}. */
static double jnum(const json_t *o, const char *key)
{
	const json_t *v = json_object_get(o, key);

	if (json_is_object(v)) {
		if (json_is_false(json_object_get(v, "set")))
			return 0;
		v = json_object_get(v, "number");
	}
	return json_number_value(v);
}

/* Whether a node state (a string such as "idle", "mixed+drain", or an
 * array of flags in v0.0.39+) lets it take jobs. */
static int node_allocatable(const json_t *node)
{
	static const char *const bad[] = {
	    "down",    "drain",	     "drained",	     "draining",
	    "fail",    "failing",    "future",	     "maint",
	    "reboot",  "power_down", "powered_down", "not_responding",
	    "unknown", NULL};
	char buf[512] = "";
	const json_t *st = json_object_get(node, "state");
	size_t i;
	json_t *e;

	if (json_is_string(st))
		snprintf(buf, sizeof(buf), "%s", json_string_value(st));
	json_array_foreach (st, i, e) {
		size_t n = strlen(buf);
		snprintf(buf + n, sizeof(buf) - n, "+%s",
			 json_string_value(e) ? json_string_value(e) : "");
	}
	json_array_foreach (json_object_get(node, "state_flags"), i, e) {
		size_t n = strlen(buf);
		snprintf(buf + n, sizeof(buf) - n, "+%s",
			 json_string_value(e) ? json_string_value(e) : "");
	}
	for (char *p = buf; *p; p++)
		*p = (char)(*p >= 'A' && *p <= 'Z' ? *p - 'A' + 'a' : *p);
	char *save = NULL;
	for (char *tok = strtok_r(buf, "+", &save); tok;
	     tok = strtok_r(NULL, "+", &save)) {
		for (i = 0; bad[i]; i++)
			if (strcmp(tok, bad[i]) == 0)
				return 0;
	}
	return 1;
}

/* Calls fn for each "gpu[:model]:count" in a GRES string such as
 * "gpu:a100:4(S:0-1),gpu:h100:2" or "gpu:a100:1(IDX:0)". */
static void each_gpu(const char *gres, void (*fn)(void *, const char *, double),
		     void *arg)
{
	char buf[1024], *save = NULL;

	if (!gres)
		return;
	snprintf(buf, sizeof(buf), "%s", gres);
	for (char *t = strtok_r(buf, ",", &save); t;
	     t = strtok_r(NULL, ",", &save)) {
		char *paren = strchr(t, '('), *c1, *c2;
		if (paren)
			*paren = '\0';
		if (strncmp(t, "gres:", 5) == 0)
			t += 5;
		if (strncmp(t, "gpu", 3) != 0 || (t[3] != ':' && t[3]))
			continue;
		c1 = t[3] ? t + 4 : t + 3;
		c2 = strrchr(c1, ':');
		char *end;
		if (c2) {
			*c2 = '\0';
			double n = strtod(c2 + 1, &end);
			if (end != c2 + 1)
				fn(arg, *c1 ? c1 : "unknown", n);
		} else {
			/* "gpu:4": no model */
			double n = strtod(c1, &end);
			if (end != c1 && *end == '\0')
				fn(arg, "unknown", n);
			else
				fn(arg, c1, 1);
		}
	}
}

struct gpu_acc {
	struct mer_agent_pool *pool;
	int field; /* 0 total, 1 total+alloc+free, 2 used (free -=),
		      3 pending */
	double mult;
};

static void gpu_add(void *arg, const char *model, double n)
{
	struct gpu_acc *a = arg;
	char kind[80], m[64];
	struct mer_agent_res *r;

	mer_agent_gpu_model(model, m, sizeof(m));
	snprintf(kind, sizeof(kind), "gpu:%s", m);
	if (!(r = mer_agent_pool_res(a->pool, kind)))
		return;
	switch (a->field) {
	case 0:
		r->total += n;
		break;
	case 1:
		r->total += n;
		r->allocatable += n;
		r->free += n;
		break;
	case 2:
		r->free -= n;
		break;
	default:
		r->pending += n * a->mult;
		break;
	}
}

static int node_in(const json_t *node, const char *part)
{
	size_t i;
	json_t *e;

	json_array_foreach (json_object_get(node, "partitions"), i, e) {
		if (json_string_value(e) &&
		    strcmp(json_string_value(e), part) == 0)
			return 1;
	}
	return 0;
}

/* The job's state as a string (v0.0.39+ gives a list of flags). */
static const char *job_state(const json_t *job)
{
	const json_t *v = json_object_get(job, "job_state");

	if (json_is_array(v))
		v = json_array_get(v, 0);
	return json_string_value(v);
}

static int slurm_probe(void *inst, struct mer_agent_capacity *cap, char *err,
		       size_t errlen)
{
	struct slurm *s = inst;
	json_t *nodes = NULL, *parts = NULL, *jobs = NULL, *pj, *nd, *jb;
	size_t i, j;
	long st;
	int rv;
	double now = (double)time(NULL);

	memset(cap, 0, sizeof(*cap));
	if ((rv = call(s, "GET", "partitions", NULL, &parts, &st, err,
		       errlen)) ||
	    (rv = call(s, "GET", "nodes", NULL, &nodes, &st, err, errlen)) ||
	    (rv = call(s, "GET", "jobs", NULL, &jobs, &st, err, errlen)))
		goto out_free_lists;
	rv = MER_EPARSE;
	if (!json_is_array(json_object_get(parts, "partitions")) ||
	    !json_is_array(json_object_get(nodes, "nodes")) ||
	    !json_is_array(json_object_get(jobs, "jobs"))) {
		snprintf(err, errlen,
			 "slurm: reply without partitions, nodes "
			 "or jobs");
		goto out_free_lists;
	}
	snprintf(cap->version, sizeof(cap->version), "%s%s%s",
		 mer_agent_jstr(nodes, "meta", "Slurm", "release", NULL)
		     ? mer_agent_jstr(nodes, "meta", "Slurm", "release", NULL)
		     : "",
		 " openapi/", s->ver);
	json_array_foreach (json_object_get(parts, "partitions"), i, pj) {
		const char *pname = mer_agent_jstr(pj, "name", NULL);
		struct mer_agent_pool *p;
		struct mer_agent_res *rc, *rm;
		if (!pname || !(p = mer_agent_cap_pool(cap, pname)))
			continue;
		if (!(rc = mer_agent_pool_res(p, "cpu")) ||
		    !(rm = mer_agent_pool_res(p, "memory_mb")))
			continue;
		json_array_foreach (json_object_get(nodes, "nodes"), j, nd) {
			double cpus = jnum(nd, "cpus");
			double mem = jnum(nd, "real_memory");
			double acpu = jnum(nd, "alloc_cpus");
			double amem = jnum(nd, "alloc_memory");
			int ok = node_allocatable(nd);
			struct gpu_acc a = {p, ok ? 1 : 0, 1};
			if (!node_in(nd, pname))
				continue;
			rc->total += cpus;
			rm->total += mem;
			if (ok) {
				rc->allocatable += cpus;
				rc->free += cpus - acpu;
				rm->allocatable += mem;
				rm->free += mem - amem;
			}
			each_gpu(mer_agent_jstr(nd, "gres", NULL), gpu_add, &a);
			if (ok) {
				a.field = 2;
				each_gpu(mer_agent_jstr(nd, "gres_used", NULL),
					 gpu_add, &a);
			}
		}
	}
	/* Pending demand, and the soonest end of a running job as the wait
	 * when the demand does not fit. */
	for (i = 0; i < cap->npools; i++) {
		struct mer_agent_pool *p = &cap->pools[i];
		double soonest = -1;
		json_array_foreach (json_object_get(jobs, "jobs"), j, jb) {
			const char *state = job_state(jb);
			const char *part =
			    mer_agent_jstr(jb, "partition", NULL);
			if (!state || !part || strcmp(part, p->name) != 0)
				continue;
			if (strcmp(state, "RUNNING") == 0) {
				const json_t *et =
				    json_object_get(jb, "end_time");
				double end = jnum(jb, "end_time");
				if (json_is_true(
					json_object_get(et, "infinite")))
					continue;
				if (end > now && end - now <= WAIT_CAP_S &&
				    (soonest < 0 || end - now < soonest))
					soonest = end - now;
				continue;
			}
			if (strcmp(state, "PENDING") != 0)
				continue;
			double nodes_n = jnum(jb, "node_count");
			struct gpu_acc a = {p, 3, nodes_n > 0 ? nodes_n : 1};
			struct mer_agent_res *r;
			p->pending_jobs++;
			if ((r = mer_agent_pool_res(p, "cpu")))
				r->pending += jnum(jb, "cpus");
			if ((r = mer_agent_pool_res(p, "memory_mb")))
				r->pending += jnum(jb, "memory_per_node") *
					      (nodes_n > 0 ? nodes_n : 1);
			each_gpu(mer_agent_jstr(jb, "tres_per_node", NULL),
				 gpu_add, &a);
		}
		int short_ = 0;
		for (j = 0; j < p->nres; j++) {
			if (p->res[j].free < 0)
				p->res[j].free = 0;
			if (p->res[j].pending > p->res[j].free)
				short_ = 1;
		}
		p->est_wait_s =
		    short_ ? (soonest >= 0 ? soonest : WAIT_DEFAULT_S) : 0;
		if (p->est_wait_s > WAIT_CAP_S)
			p->est_wait_s = WAIT_CAP_S;
	}
	rv = 0;
out_free_lists:
	json_decref(nodes);
	json_decref(parts);
	json_decref(jobs);
	return rv;
}

static char *make_script(const char *command)
{
	size_t n = strlen(command) + 32;
	char *s = malloc(n);

	if (s)
		snprintf(s, n, "#!/bin/sh\n%s\n", command);
	return s;
}

static int slurm_submit(void *inst, const struct mer_agent_stage *st,
			char *job_id, size_t n, char *err, size_t errlen)
{
	struct slurm *s = inst;
	json_t *job = NULL, *body = NULL, *reply = NULL, *env;
	char name[MER_AGENT_NAME_MAX + 8], gres[MER_AGENT_NAME_MAX + 48];
	char *script = NULL;
	const char *part =
	    st->pool[0]
		? st->pool
		: (s->cfg->queue && *s->cfg->queue ? s->cfg->queue : NULL);
	long status;
	int rv;

	if (!st->command || !*st->command) {
		snprintf(err, errlen, "slurm: a stage needs a command");
		return MER_EINVAL;
	}
	if ((rv = discover(s, err, errlen)))
		return rv;
	rv = MER_ENOMEM;
	snprintf(name, sizeof(name), JOB_PREFIX "%s", st->id);
	if (!(script = make_script(st->command)))
		goto out_free_job;
	/* slurmrestd refuses a job without an environment. */
	if (s->minor >= 39)
		env = json_pack("[s, s]", "PATH=/usr/local/bin:/usr/bin:/bin",
				"MERIDIAN_STAGE_ID=");
	else
		env = json_pack("{s:s, s:s}", "PATH",
				"/usr/local/bin:/usr/bin:/bin",
				"MERIDIAN_STAGE_ID", st->id);
	if (env && s->minor >= 39) {
		char e[MER_AGENT_NAME_MAX + 32];
		snprintf(e, sizeof(e), "MERIDIAN_STAGE_ID=%s", st->id);
		json_array_set_new(env, 1, json_string(e));
	}
	job = json_pack("{s:s, s:s, s:o}", "name", name,
			"current_working_directory",
			st->workdir && *st->workdir ? st->workdir : "/tmp",
			"environment", env);
	if (!job)
		goto out_free_job;
	if (part)
		json_object_set_new(job, "partition", json_string(part));
	if (st->output && *st->output)
		json_object_set_new(job, "standard_output",
				    json_string(st->output));
	if (st->cpus > 0)
		json_object_set_new(job, "cpus_per_task",
				    json_integer(st->cpus));
	if (st->replicas > 1)
		json_object_set_new(job, "tasks", json_integer(st->replicas));
	/* Several replicas are several tasks, maybe on one node: ask per
	 * task (memory per CPU of the task, GPUs per task) so that every
	 * replica gets its share, not the node's. */
	if (st->memory_mb > 0) {
		int per_task = st->replicas > 1;
		json_int_t cpt = st->cpus > 0 ? st->cpus : 1;
		json_int_t mb =
		    per_task ? (st->memory_mb + cpt - 1) / cpt : st->memory_mb;
		json_object_set_new(
		    job, per_task ? "memory_per_cpu" : "memory_per_node",
		    s->minor >= 39
			? json_pack("{s:b, s:I}", "set", 1, "number", mb)
			: json_integer(mb));
	}
	if (st->time_limit_s > 0) {
		json_int_t min = (json_int_t)((st->time_limit_s + 59) / 60);
		json_object_set_new(
		    job, "time_limit",
		    s->minor >= 39
			? json_pack("{s:b, s:I}", "set", 1, "number", min)
			: json_integer(min));
	}
	if (st->gpus > 0) {
		if (st->gpu_model[0])
			snprintf(gres, sizeof(gres), "gpu:%s:%lld",
				 st->gpu_model, (long long)st->gpus);
		else
			snprintf(gres, sizeof(gres), "gpu:%lld",
				 (long long)st->gpus);
		if (s->minor >= 39) {
			char t[MER_AGENT_NAME_MAX + 64];
			snprintf(t, sizeof(t), "gres/%s", gres);
			json_object_set_new(job,
					    st->replicas > 1 ? "tres_per_task"
							     : "tres_per_node",
					    json_string(t));
		} else if (st->replicas > 1) {
			/* --gpus-per-task: "[type:]count" */
			json_object_set_new(job, "gpus_per_task",
					    json_string(gres + 4));
		} else {
			json_object_set_new(job, "gres", json_string(gres));
		}
	}
	if (s->minor >= 39) {
		json_object_set_new(job, "script", json_string(script));
		body = json_pack("{s:O}", "job", job);
	} else {
		body = json_pack("{s:O, s:s}", "job", job, "script", script);
	}
	if (!body)
		goto out_free_job;
	if ((rv = call(s, "POST", "job/submit", body, &reply, &status, err,
		       errlen)))
		goto out_free_job;
	json_int_t id = (json_int_t)jnum(reply, "job_id");
	if (id <= 0) {
		const char *e = mer_agent_jstr(
		    json_array_get(json_object_get(reply, "errors"), 0),
		    "error", NULL);
		snprintf(err, errlen, "slurm: job refused: %.200s",
			 e ? e : "no job_id in reply");
		rv = MER_EREMOTE;
		goto out_free_job;
	}
	snprintf(job_id, n, "%lld", (long long)id);
	rv = 0;
out_free_job:
	free(script);
	json_decref(job);
	json_decref(body);
	json_decref(reply);
	return rv;
}

static int valid_id(const char *id)
{
	if (!id || !*id || strlen(id) > 20)
		return 0;
	for (const char *p = id; *p; p++)
		if (*p < '0' || *p > '9')
			return 0;
	return 1;
}

/* slurmrestd 22.05 answers an unknown job id with an error (not always a
 * 404); these are the words it uses. */
static int says_unknown(const json_t *reply)
{
	size_t i;
	json_t *e;

	json_array_foreach (json_object_get(reply, "errors"), i, e) {
		const char *d = mer_agent_jstr(e, "error", NULL);
		const char *d2 = mer_agent_jstr(e, "description", NULL);
		if ((d && (strstr(d, "Invalid job id") ||
			   strstr(d, "Unable to query JobId"))) ||
		    (d2 && strstr(d2, "Invalid job id")))
			return 1;
		if (json_integer_value(json_object_get(e, "error_number")) ==
			2017 || /* ESLURM_INVALID_JOB_ID */
		    json_integer_value(json_object_get(e, "error_number")) ==
			9003) /* ESLURM_REST_EMPTY_RESULT (slurmdbd) */
			return 1;
	}
	return 0;
}

static int exit_code_of(const json_t *job)
{
	const json_t *ec = json_object_get(job, "exit_code");

	if (json_is_object(ec)) {
		/* v0.0.39+: {"status": [...], "return_code": N|{...},
		 * "signal": {...}} */
		const json_t *rc = json_object_get(ec, "return_code");
		if (json_is_object(rc))
			rc = json_object_get(rc, "number");
		return json_is_integer(rc) ? (int)json_integer_value(rc) : -1;
	}
	if (!json_is_integer(ec))
		return -1;
	/* v0.0.38: the raw wait status. */
	int ws = (int)json_integer_value(ec);
	if (WIFEXITED(ws))
		return WEXITSTATUS(ws);
	if (WIFSIGNALED(ws))
		return 128 + WTERMSIG(ws);
	return -1;
}

/* slurmdbd's view of a job slurmctld has purged (after MinJobAge): its
 * state is {"current": "COMPLETED" | ["COMPLETED"], "reason": ...}. */
static int db_job(struct slurm *s, const char *job_id, json_t **reply,
		  const char **state, json_t **job, char *err, size_t errlen)
{
	char path[128];
	const json_t *cur;
	long st;
	int rv;

	snprintf(path, sizeof(path), "/slurmdb/%s/job/%s", s->ver, job_id);
	rv = mer_agent_http_do(&s->http, "GET", path, NULL, NULL, &st, reply,
			       err, errlen);
	if ((rv == MER_EREMOTE && (st == 404 || says_unknown(*reply))) ||
	    (rv == 0 && json_array_size(json_object_get(*reply, "jobs")) == 0))
		rv = MER_ENOTFOUND;
	if (rv)
		return rv;
	*job = json_array_get(json_object_get(*reply, "jobs"), 0);
	cur = mer_agent_jget(*job, "state", "current", NULL);
	if (json_is_array(cur))
		cur = json_array_get(cur, 0);
	*state = json_string_value(cur);
	return 0;
}

static int slurm_status(void *inst, const char *job_id,
			struct mer_agent_stage_status *out, char *err,
			size_t errlen)
{
	struct slurm *s = inst;
	json_t *reply = NULL, *job;
	const char *state, *why;
	char rest[64];
	long st;
	int rv, from_db = 0;

	memset(out, 0, sizeof(*out));
	out->exit_code = -1;
	if (!valid_id(job_id))
		return MER_EINVAL;
	snprintf(rest, sizeof(rest), "job/%s", job_id);
	rv = call(s, "GET", rest, NULL, &reply, &st, err, errlen);
	if ((rv == MER_EREMOTE && (st == 404 || says_unknown(reply))) ||
	    (rv == 0 && json_array_size(json_object_get(reply, "jobs")) == 0))
		rv = MER_ENOTFOUND;
	if (rv == MER_ENOTFOUND && s->has_db) {
		/* Purged by slurmctld: accounting still knows the end. */
		json_decref(reply);
		reply = NULL;
		rv = db_job(s, job_id, &reply, &state, &job, err, errlen);
		from_db = 1;
	}
	if (rv)
		goto out_free_reply;
	if (!from_db) {
		job = json_array_get(json_object_get(reply, "jobs"), 0);
		state = job_state(job);
	}
	if (!state) {
		snprintf(err, errlen, "slurm: job %s without job_state",
			 job_id);
		rv = MER_EPARSE;
		goto out_free_reply;
	}
	if (!strcmp(state, "PENDING") || !strcmp(state, "CONFIGURING") ||
	    !strcmp(state, "REQUEUED") || !strcmp(state, "SUSPENDED")) {
		out->state = MER_AGENT_STAGE_PENDING;
	} else if (!strcmp(state, "RUNNING") || !strcmp(state, "COMPLETING")) {
		out->state = MER_AGENT_STAGE_RUNNING;
	} else if (!strcmp(state, "COMPLETED")) {
		out->state = MER_AGENT_STAGE_SUCCEEDED;
		out->exit_code = 0;
	} else if (!strcmp(state, "CANCELLED")) {
		out->state = MER_AGENT_STAGE_CANCELLED;
	} else {
		/* FAILED, TIMEOUT, NODE_FAIL, OUT_OF_MEMORY, PREEMPTED,
		 * BOOT_FAIL, DEADLINE */
		out->state = MER_AGENT_STAGE_FAILED;
		out->exit_code = exit_code_of(job);
	}
	why = from_db ? mer_agent_jstr(job, "state", "reason", NULL)
		      : mer_agent_jstr(job, "state_reason", NULL);
	snprintf(out->reason, sizeof(out->reason), "%s%s%.200s", state,
		 why ? " " : "", why ? why : "");
out_free_reply:
	json_decref(reply);
	return rv;
}

static int slurm_find(void *inst, const char *stage_id, char *job_id, size_t n,
		      char *err, size_t errlen)
{
	struct slurm *s = inst;
	json_t *reply = NULL, *jb;
	char name[MER_AGENT_NAME_MAX + 8];
	long st;
	size_t i;
	double best = 0;
	int rv;

	snprintf(name, sizeof(name), JOB_PREFIX "%s", stage_id);
	if ((rv = call(s, "GET", "jobs", NULL, &reply, &st, err, errlen)))
		goto out_free_reply;
	/* The newest job carrying the name: older ones were earlier tries. */
	json_array_foreach (json_object_get(reply, "jobs"), i, jb) {
		const char *nm = mer_agent_jstr(jb, "name", NULL);
		double id = jnum(jb, "job_id");
		if (nm && strcmp(nm, name) == 0 && id > best)
			best = id;
	}
	if (best <= 0) {
		snprintf(err, errlen, "slurm: no job named %s", name);
		rv = MER_ENOTFOUND;
		goto out_free_reply;
	}
	snprintf(job_id, n, "%.0f", best);
out_free_reply:
	json_decref(reply);
	return rv;
}

static int slurm_cancel(void *inst, const char *job_id, char *err,
			size_t errlen)
{
	struct slurm *s = inst;
	json_t *reply = NULL;
	char rest[64];
	long st;
	int rv;

	if (!valid_id(job_id))
		return MER_EINVAL;
	snprintf(rest, sizeof(rest), "job/%s", job_id);
	rv = call(s, "DELETE", rest, NULL, &reply, &st, err, errlen);
	if (rv == MER_EREMOTE) {
		/* Gone or finished already: nothing left to cancel. */
		struct mer_agent_stage_status ss;
		char e2[256];
		int r2 = slurm_status(s, job_id, &ss, e2, sizeof(e2));
		if (r2 == MER_ENOTFOUND ||
		    (r2 == 0 && mer_agent_stage_state_final(ss.state)))
			rv = 0;
	}
	json_decref(reply);
	return rv;
}

static void slurm_close(void *inst)
{
	struct slurm *s = inst;

	if (!s)
		return;
	mer_agent_http_clear(&s->http);
	free(s);
}

const struct adapter_ops mer_agent_slurm_ops = {
    .kind = "slurm",
    .open = slurm_open,
    .probe = slurm_probe,
    .submit = slurm_submit,
    .status = slurm_status,
    .find = slurm_find,
    .cancel = slurm_cancel,
    .close = slurm_close,
};
