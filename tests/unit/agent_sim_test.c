/*
 * Tests for the site agent's core with the sim adapter: the summary (and
 * that policy/fed.c accepts it, so the two cannot drift), datasets present
 * and missing, share fractions, stage runs with exit codes, cancel,
 * idempotent launch, restart reconciliation from the state file, an
 * unreachable scheduler with backoff, and a malformed scheduler reply.
 */
#include "common/err.h"
#include "policy/fed.h"
#include "site-agent/adapter.h"
#include "site-agent/config.h"
#include "site-agent/runner.h"
#include "site-agent/summary.h"
#include "tests/harness.h"
#include "tests/lib/proc.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

static const char *sim_text =
    "{\"version\": \"sim-test\", \"pools\": [\n"
    " {\"name\": \"gpu\", \"est_wait_s\": 12,\n"
    "  \"nodes\": [{\"count\": 4, \"cpus\": 64, \"memory_mb\": 512000,\n"
    "              \"gpus\": {\"a100\": 8}, \"down\": 1},\n"
    "             {\"count\": 1, \"cpus\": 32, \"memory_mb\": 1000,\n"
    "              \"gpus\": {\"t4\": 2}}],\n"
    "  \"background\": {\"load\": 0.25}, \"pending\": {\"gpu:a100\": 4}},\n"
    " {\"name\": \"cpu\", \"nodes\": [{\"count\": 10, \"cpus\": 100,\n"
    "   \"memory_mb\": 1000}], \"background\": {\"load\": 0.5}},\n"
    " {\"name\": \"private\", \"nodes\": [{\"count\": 1, \"cpus\": 8}]}\n"
    "]}\n";

struct env {
	char *dir;
	char sim[512], state[512], data[512];
	struct mer_agent_cfg cfg;
};

static int write_file(const char *path, const char *text)
{
	FILE *f = fopen(path, "w");
	if (!f)
		return MER_EIO;
	fputs(text, f);
	return fclose(f) ? MER_EIO : 0;
}

/* A temp dir with a sim file, a 1000-byte dataset and a site config. */
static int env_setup(struct env *e, const char *extra_share)
{
	char cfg[4096], err[512], ds[600];
	int rv;

	memset(e, 0, sizeof(*e));
	if ((rv = t_tmpdir("agent-sim", &e->dir)))
		return rv;
	snprintf(e->sim, sizeof(e->sim), "%s/site.sim.json", e->dir);
	snprintf(e->state, sizeof(e->state), "%s/agent.state", e->dir);
	snprintf(e->data, sizeof(e->data), "%s/data", e->dir);
	mkdir(e->data, 0755);
	snprintf(ds, sizeof(ds), "%s/part-0", e->data);
	char blob[1001];
	memset(blob, 'x', 1000);
	blob[1000] = '\0';
	if ((rv = write_file(e->sim, sim_text)) || (rv = write_file(ds, blob)))
		return rv;
	snprintf(cfg, sizeof(cfg),
		 "{\"site\": {\"name\": \"sim-a\", \"region\": \"cn-east-1\","
		 " \"zone\": \"z1\", \"labels\": {\"country\": \"cn\"}},"
		 " \"scheduler\": {\"kind\": \"sim\", \"sim_file\": \"%s\","
		 "   \"time_scale\": 100},"
		 " \"share\": %s,"
		 " \"fabric\": [\"ib\"], \"storage\": [\"lustre\"],"
		 " \"prices\": {\"gpu_hour\": {\"a100\": 2.5}, \"core_hour\": "
		 "0.03, \"egress_gb\": 0.05},"
		 " \"wan_gbps\": 10,"
		 " \"datasets\": ["
		 "  {\"name\": \"present\", \"bytes\": 1, \"path\": \"%s\","
		 "   \"tags\": [\"residency:cn\"]},"
		 "  {\"name\": \"gone\", \"bytes\": 5, \"path\": \"%s/nope\"},"
		 "  {\"name\": \"remote\", \"bytes\": 77, \"path\": "
		 "\"s3://bucket/x\"}],"
		 " \"agent\": {\"state_file\": \"%s\", \"retry_max\": "
		 "\"2s\"}}",
		 e->sim,
		 extra_share ? extra_share
			     : "{\"fraction\": 0.5, \"pools\": [\"gpu\", "
			       "{\"name\": \"cpu\", \"fraction\": 0.25}]}",
		 e->data, e->dir, e->state);
	rv = mer_agent_cfg_load_string("site.json", cfg, &e->cfg, err,
				       sizeof(err));
	if (rv)
		fprintf(stderr, "config: %s\n", err);
	return rv;
}

static void env_free(struct env *e)
{
	mer_agent_cfg_free(&e->cfg);
	t_rmtree(e->dir);
	free(e->dir);
}

static double res(json_t *site, const char *pool, const char *kind,
		  const char *field)
{
	size_t i;
	json_t *p;

	json_array_foreach (json_object_get(site, "pools"), i, p) {
		if (strcmp(json_string_value(json_object_get(p, "name")),
			   pool) == 0)
			return json_number_value(json_object_get(
			    json_object_get(json_object_get(p, "resources"),
					    kind),
			    field));
	}
	return -1;
}

static void test_summary_shape_and_fed(void)
{
	struct env e;
	struct mer_agent *a = NULL;
	json_t *s = NULL, *site;
	char err[512] = "";

	T_OK(env_setup(&e, NULL));
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_probe(a));
	T_OK(mer_agent_summary(a, &s));
	site = json_object_get(s, "site");
	T_EQ_STR(json_string_value(json_object_get(site, "name")), "sim-a");
	T_EQ_STR(json_string_value(json_object_get(site, "scheduler")), "sim");
	T_EQ_STR(json_string_value(json_object_get(site, "health")), "healthy");
	T_EQ_INT(json_array_size(json_object_get(site, "pools")), 2);
	/* gpu pool: 4 nodes x 8 a100, one down; 25% background load */
	T_EXPECT(res(site, "gpu", "gpu:a100", "total") == 32);
	T_EXPECT(res(site, "gpu", "gpu:a100", "allocatable") == 24);
	T_EXPECT(res(site, "gpu", "gpu:a100", "free") == 18);
	T_EXPECT(res(site, "gpu", "gpu:a100", "pending") == 4);
	T_EXPECT(res(site, "gpu", "cpu", "total") == 288);
	/* t4 has no price: left out, and said so */
	json_t *gp = json_array_get(json_object_get(site, "pools"), 0);
	T_EXPECT(json_object_get(json_object_get(gp, "resources"), "gpu:t4") ==
		 NULL);
	char *up = json_dumps(
	    json_object_get(json_object_get(s, "status"), "unpriced_gpus"), 0);
	T_CONTAINS(up, "gpu/gpu:t4");
	free(up);
	/* cpu pool offered at 0.25 while the site's fraction is 0.5: its
	 * allocatable is halved so fed.c's min(free, alloc * 0.5) = 25% */
	T_EXPECT(res(site, "cpu", "cpu", "total") == 1000);
	T_EXPECT(res(site, "cpu", "cpu", "allocatable") == 500);
	T_EXPECT(res(site, "cpu", "cpu", "free") == 500);
	T_EXPECT(json_number_value(json_object_get(site, "shared_fraction")) ==
		 0.5);

	/* The broker's parser takes it as it is. */
	T_OK(mer_site_validate(site, NULL, err, sizeof(err)));
	struct mer_fed *fed = NULL;
	json_t *root = json_pack("{s:[O]}", "sites", site);
	T_OK(mer_fed_from_json(root, NULL, &fed, err, sizeof(err)));
	int ki = mer_fed_kind_index(fed, "cpu");
	T_ASSERT(ki >= 0);
	const struct mer_site *fs = &fed->sites[0];
	for (size_t i = 0; i < fs->npools; i++) {
		if (strcmp(fs->pools[i].name, "cpu") == 0)
			T_EXPECT(fs->pools[i].res[ki].usable == 250);
	}
	T_EQ_INT(fed->ndatasets, 2);
	mer_fed_free(fed);
	json_decref(root);
	json_decref(s);
	mer_agent_close(a);
	env_free(&e);
}

static void test_datasets_present_and_missing(void)
{
	struct env e;
	struct mer_agent *a = NULL;
	json_t *s = NULL, *d;
	char err[512] = "";
	size_t i;
	int seen_present = 0, seen_remote = 0;

	T_OK(env_setup(&e, NULL));
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_probe(a));
	T_OK(mer_agent_summary(a, &s));
	json_array_foreach (
	    json_object_get(json_object_get(s, "site"), "datasets"), i, d) {
		const char *n = json_string_value(json_object_get(d, "name"));
		T_EXPECT(strcmp(n, "gone") != 0);
		if (!strcmp(n, "present")) {
			seen_present = 1;
			/* the real size, not the config's */
			T_EQ_INT(
			    json_integer_value(json_object_get(d, "bytes")),
			    1000);
		}
		if (!strcmp(n, "remote")) {
			seen_remote = 1;
			T_EQ_INT(
			    json_integer_value(json_object_get(d, "bytes")),
			    77);
		}
	}
	T_EXPECT(seen_present && seen_remote);
	json_t *miss =
	    json_object_get(json_object_get(s, "status"), "datasets_missing");
	T_EQ_INT(json_array_size(miss), 1);
	T_EQ_STR(
	    json_string_value(json_object_get(json_array_get(miss, 0), "name")),
	    "gone");
	json_decref(s);
	mer_agent_close(a);
	env_free(&e);
}

static void test_all_pools_when_share_empty(void)
{
	struct env e;
	struct mer_agent *a = NULL;
	json_t *s = NULL;
	char err[512] = "";

	T_OK(env_setup(&e, "{}"));
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_probe(a));
	T_OK(mer_agent_summary(a, &s));
	T_EQ_INT(json_array_size(
		     json_object_get(json_object_get(s, "site"), "pools")),
		 3);
	T_OK(mer_site_validate(json_object_get(s, "site"), NULL, err,
			       sizeof(err)));
	json_decref(s);
	mer_agent_close(a);
	env_free(&e);
}

/* Ticks until the stage reaches a final state (or 5 s pass). */
static enum mer_agent_stage_state wait_final(struct mer_agent *a,
					     const char *id, int *code)
{
	enum mer_agent_stage_state st = MER_AGENT_STAGE_PENDING;
	long long end = t_now_ms() + 5000;

	while (t_now_ms() < end) {
		mer_agent_tick(a);
		if (mer_agent_stage_get(a, id, &st, code, NULL, 0) == 0 &&
		    mer_agent_stage_state_final(st))
			break;
		t_sleep_ms(10);
	}
	return st;
}

static int has_event(struct mer_agent *a, const char *stage, const char *event,
		     int *code)
{
	json_t *ev = mer_agent_events(a), *e;
	size_t i;
	int found = 0;

	json_array_foreach (ev, i, e) {
		if (!strcmp(json_string_value(json_object_get(e, "stage")),
			    stage) &&
		    !strcmp(json_string_value(json_object_get(e, "event")),
			    event)) {
			found++;
			if (code)
				*code = (int)json_integer_value(
				    json_object_get(e, "exit_code"));
		}
	}
	json_decref(ev);
	return found;
}

static json_t *launch_cmd(const char *cid, const char *sid, double dur,
			  int code)
{
	return json_pack("{s:s, s:s, s:{s:s, s:s, s:s, s:i, s:s, s:i, s:f, "
			 "s:i}}",
			 "id", cid, "type", "launch", "stage", "id", sid,
			 "command", "train.sh", "pool", "gpu", "cpus", 8,
			 "gpu_model", "a100", "gpus", 2, "duration_s", dur,
			 "exit_code", code);
}

static void test_stage_runs(void)
{
	struct env e;
	struct mer_agent *a = NULL;
	json_t *cmd, *reply = NULL, *s = NULL;
	char err[512] = "";
	int code = -9;

	T_OK(env_setup(&e, NULL));
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_probe(a));
	/* 60 s at time_scale 100: 600 ms, ample for the checks below
	 * while it runs even on a loaded machine */
	cmd = launch_cmd("c1", "job1/train", 60, 0);
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EXPECT(json_is_true(json_object_get(reply, "ok")));
	T_EQ_STR(json_string_value(json_object_get(reply, "result")),
		 "launched");
	json_decref(reply);
	/* While it runs, the summary shows what the federation holds. */
	mer_agent_tick(a);
	T_OK(mer_agent_probe(a));
	T_OK(mer_agent_summary(a, &s));
	T_EXPECT(res(json_object_get(s, "site"), "gpu", "gpu:a100",
		     "federation_used") == 2);
	T_EXPECT(res(json_object_get(s, "site"), "gpu", "gpu:a100", "free") ==
		 16);
	json_decref(s);
	/* The same launch again: acknowledged, not run twice. */
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EQ_STR(json_string_value(json_object_get(reply, "result")),
		 "already_running");
	json_decref(reply);
	json_decref(cmd);
	T_EQ_INT(mer_agent_stage_count(a), 1);
	T_EQ_INT(wait_final(a, "job1/train", &code), MER_AGENT_STAGE_SUCCEEDED);
	T_EQ_INT(code, 0);
	T_EQ_INT(has_event(a, "job1/train", "started", NULL), 1);
	T_EQ_INT(has_event(a, "job1/train", "finished", &code), 1);
	T_EQ_INT(code, 0);

	/* Exit code 3: failed with 3. */
	cmd = launch_cmd("c2", "job1/eval", 1, 3);
	T_OK(mer_agent_command(a, cmd, &reply));
	json_decref(reply);
	json_decref(cmd);
	T_EQ_INT(wait_final(a, "job1/eval", &code), MER_AGENT_STAGE_FAILED);
	T_EQ_INT(code, 3);
	T_EQ_INT(has_event(a, "job1/eval", "failed", &code), 1);
	T_EQ_INT(code, 3);

	/* Events stay until acknowledged. */
	json_t *ev = mer_agent_events(a), *ids = json_array(), *x;
	size_t i;
	json_array_foreach (ev, i, x)
		json_array_append(ids, json_object_get(x, "id"));
	T_EQ_INT(json_array_size(ev), 4);
	T_OK(mer_agent_ack_events(a, ids));
	json_decref(ev);
	json_decref(ids);
	ev = mer_agent_events(a);
	T_EQ_INT(json_array_size(ev), 0);
	json_decref(ev);
	mer_agent_close(a);
	env_free(&e);
}

static void test_cancel(void)
{
	struct env e;
	struct mer_agent *a = NULL;
	json_t *cmd, *reply = NULL;
	char err[512] = "";
	int code;

	T_OK(env_setup(&e, NULL));
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	cmd = launch_cmd("c1", "long", 1e6, 0);
	T_OK(mer_agent_command(a, cmd, &reply));
	json_decref(reply);
	json_decref(cmd);
	mer_agent_tick(a);
	cmd = json_pack("{s:s, s:s, s:s}", "id", "c2", "type", "cancel",
			"stage_id", "long");
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EXPECT(json_is_true(json_object_get(reply, "ok")));
	json_decref(reply);
	json_decref(cmd);
	T_EQ_INT(wait_final(a, "long", &code), MER_AGENT_STAGE_CANCELLED);
	T_EQ_INT(has_event(a, "long", "cancelled", NULL), 1);
	/* An unknown stage: refused with a reason. */
	cmd = json_pack("{s:s, s:s, s:s}", "id", "c3", "type", "cancel",
			"stage_id", "nope");
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EXPECT(json_is_false(json_object_get(reply, "ok")));
	json_decref(reply);
	json_decref(cmd);
	mer_agent_close(a);
	env_free(&e);
}

static void test_restart_finds_stages(void)
{
	struct env e;
	struct mer_agent *a = NULL;
	json_t *cmd, *reply = NULL;
	char err[512] = "", job1[128], job2[128];
	int code;

	T_OK(env_setup(&e, NULL));
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	cmd = launch_cmd("c1", "s1", 50, 0); /* 500 ms */
	T_OK(mer_agent_command(a, cmd, &reply));
	json_decref(reply);
	T_OK(mer_agent_stage_get(a, "s1", NULL, NULL, job1, sizeof(job1)));
	mer_agent_close(a);

	/* A new life of the agent: the state file brings the stage back. */
	a = NULL;
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_stage_get(a, "s1", NULL, NULL, job2, sizeof(job2)));
	T_EQ_STR(job1, job2);
	/* The broker re-sends the launch: no second job. */
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EQ_STR(json_string_value(json_object_get(reply, "result")),
		 "already_running");
	json_decref(reply);
	T_EQ_INT(mer_agent_stage_count(a), 1);
	T_EQ_INT(wait_final(a, "s1", &code), MER_AGENT_STAGE_SUCCEEDED);
	mer_agent_close(a);

	/* State file lost: the launch finds the job by stage id instead of
	 * submitting it again. */
	T_EXPECT(unlink(e.state) == 0);
	a = NULL;
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	T_EQ_INT(mer_agent_stage_count(a), 0);
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EQ_STR(json_string_value(json_object_get(reply, "result")),
		 "launched");
	json_decref(reply);
	T_OK(mer_agent_stage_get(a, "s1", NULL, NULL, job2, sizeof(job2)));
	T_EQ_STR(job1, job2);
	json_decref(cmd);
	mer_agent_close(a);
	env_free(&e);
}

static void test_crash_between_save_and_submit(void)
{
	struct env e;
	struct mer_agent *a = NULL;
	char err[512] = "", text[2048], job[128];
	int code;

	T_OK(env_setup(&e, NULL));
	/* What a crash right after the pre-submit save leaves behind. */
	snprintf(text, sizeof(text),
		 "{\"version\": 1, \"events\": [], \"stages\": [{\"id\": "
		 "\"half\", \"job_id\": \"\", \"state\": \"pending\", "
		 "\"exit_code\": -1, \"cancel\": false, \"submitting\": true, "
		 "\"ended_at\": 0, \"spec\": {\"id\": \"half\", \"command\": "
		 "\"x\", \"duration_s\": 1}}]}");
	T_OK(write_file(e.state, text));
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_stage_get(a, "half", NULL, NULL, job, sizeof(job)));
	T_EXPECT(job[0] != '\0');
	T_EQ_INT(wait_final(a, "half", &code), MER_AGENT_STAGE_SUCCEEDED);
	mer_agent_close(a);
	/* A corrupt state file is refused, not ignored. */
	T_OK(write_file(e.state, "{\"version\": 1, \"stages\": 5}"));
	a = NULL;
	T_EQ_INT(mer_agent_open(&e.cfg, &a, err, sizeof(err)), MER_EPARSE);
	T_CONTAINS(err, "state file");
	env_free(&e);
}

static void test_unreachable_and_malformed(void)
{
	struct env e;
	struct mer_agent *a = NULL;
	json_t *s = NULL;
	char err[512] = "";

	T_OK(env_setup(&e, NULL));
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_probe(a));
	/* The scheduler goes away. */
	T_OK(write_file(e.sim, "{\"unreachable\": true}"));
	T_EQ_INT(mer_agent_probe(a), MER_EUNREACHABLE);
	T_CONTAINS(mer_agent_unhealthy_reason(a), "unreachable");
	/* Backoff: the next probe waits. */
	T_EQ_INT(mer_agent_probe(a), MER_EBUSY);
	T_OK(mer_agent_summary(a, &s));
	T_EQ_STR(json_string_value(
		     json_object_get(json_object_get(s, "site"), "health")),
		 "down");
	T_CONTAINS(json_string_value(json_object_get(
		       json_object_get(s, "status"), "health_reason")),
		   "unreachable");
	/* still a valid snapshot, with the last capacity known */
	T_OK(mer_site_validate(json_object_get(s, "site"), NULL, err,
			       sizeof(err)));
	json_decref(s);
	/* A malformed reply is logged and survived. */
	T_OK(write_file(e.sim, "{\"pools\": [{\"name\": \"gpu\", \"nodes\": "
			       "[{\"cpus\": \"many\"}]}]}"));
	mer_agent_probe_now(a);
	T_EQ_INT(mer_agent_probe(a), MER_EPARSE);
	T_CONTAINS(mer_agent_unhealthy_reason(a), "cpus");
	/* Back to normal. */
	T_OK(write_file(e.sim, sim_text));
	mer_agent_probe_now(a);
	T_OK(mer_agent_probe(a));
	T_EQ_STR(mer_agent_unhealthy_reason(a), "");
	mer_agent_close(a);
	env_free(&e);
}

static void test_bad_launch(void)
{
	struct env e;
	struct mer_agent *a = NULL;
	json_t *cmd, *reply = NULL;
	char err[512] = "";

	T_OK(env_setup(&e, NULL));
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	cmd = json_pack("{s:s, s:s, s:{s:s}}", "id", "c1", "type", "launch",
			"stage", "id", "no-command");
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EXPECT(json_is_false(json_object_get(reply, "ok")));
	T_CONTAINS(json_string_value(json_object_get(
		       json_object_get(reply, "error"), "message")),
		   "stage.command");
	json_decref(reply);
	json_decref(cmd);
	cmd = json_pack("{s:s, s:s, s:{s:s, s:s, s:s, s:i}}", "id", "c2",
			"type", "launch", "stage", "id", "x", "command", "y",
			"gpu_model", "b200", "gpus", 1);
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EXPECT(json_is_false(json_object_get(reply, "ok")));
	json_decref(reply);
	json_decref(cmd);
	T_EQ_INT(mer_agent_stage_count(a), 0);
	cmd = json_pack("{s:s, s:s}", "id", "c4", "type", "launch");
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EXPECT(json_is_false(json_object_get(reply, "ok")));
	json_decref(reply);
	json_decref(cmd);
	T_EQ_INT(mer_agent_stage_count(a), 0);
	cmd = json_pack("{s:s, s:s}", "id", "c3", "type", "drain");
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EXPECT(json_is_false(json_object_get(reply, "ok")));
	json_decref(reply);
	json_decref(cmd);
	mer_agent_close(a);
	env_free(&e);
}

static void test_path_size(void)
{
	struct env e;
	uint64_t n = 0;
	char err[256];

	T_OK(env_setup(&e, NULL));
	T_OK(mer_agent_path_size(e.data, &n, err, sizeof(err)));
	T_EQ_INT(n, 1000);
	T_EQ_INT(mer_agent_path_size("/nonexistent/x", &n, err, sizeof(err)),
		 MER_ENOTFOUND);
	env_free(&e);
}

static char *slurp(const char *path)
{
	FILE *f = fopen(path, "r");
	char *buf = calloc(1, 65536);

	if (f && buf)
		fread(buf, 1, 65535, f);
	if (f)
		fclose(f);
	return buf;
}

static const char *half_state =
    "{\"version\": 1, \"events\": [], \"stages\": [{\"id\": "
    "\"half\", \"job_id\": \"\", \"state\": \"pending\", "
    "\"exit_code\": -1, \"cancel\": false, \"submitting\": true, "
    "\"ended_at\": 0, \"spec\": {\"id\": \"half\", \"command\": "
    "\"x\", \"duration_s\": 1}}]}";

/* Review 2: --print-summary opens read-only (no submit, no save); run mode
 * holds the state file against a second agent. */
static void test_readonly_and_lock(void)
{
	struct env e;
	struct mer_agent *a = NULL, *b = NULL;
	struct mer_agent_stage st = {0};
	json_t *s = NULL;
	char err[512] = "", job[128] = "x", *before, *after;
	int already;

	T_OK(env_setup(&e, NULL));
	T_OK(write_file(e.state, half_state));
	before = slurp(e.state);
	T_OK(mer_agent_open_readonly(&e.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_probe(a));
	T_OK(mer_agent_summary(a, &s));
	json_decref(s);
	T_EQ_INT(mer_agent_tick(a), 0);
	T_OK(mer_agent_stage_get(a, "half", NULL, NULL, job, sizeof(job)));
	T_EQ_STR(job, ""); /* not submitted */
	snprintf(st.id, sizeof(st.id), "ro");
	st.command = strdup("x");
	T_EQ_INT(mer_agent_launch(a, &st, &already, err, sizeof(err)),
		 MER_ESTATE);
	after = slurp(e.state);
	T_EQ_STR(after, before);
	free(after);

	/* a running agent and a read-only one side by side: fine */
	T_OK(mer_agent_open(&e.cfg, &b, err, sizeof(err)));
	mer_agent_close(a);
	a = NULL;
	/* a second running agent on the same state file: refused */
	T_EQ_INT(mer_agent_open(&e.cfg, &a, err, sizeof(err)), MER_EBUSY);
	T_CONTAINS(err, "another meridian-agent");
	mer_agent_close(b);
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	mer_agent_close(a);
	free(before);
	mer_agent_stage_clear(&st);
	env_free(&e);
}

/* Review 8: a launch completed during reconcile reaches the state file. */
static void test_reconcile_resubmit_saved(void)
{
	struct env e;
	struct mer_agent *a = NULL;
	char err[512] = "", *text;
	json_t *j, *st0;

	T_OK(env_setup(&e, NULL));
	T_OK(write_file(e.state, half_state));
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	text = slurp(e.state);
	j = json_loads(text, 0, NULL);
	st0 = json_array_get(json_object_get(j, "stages"), 0);
	T_ASSERT(st0 != NULL);
	T_EXPECT(json_is_false(json_object_get(st0, "submitting")));
	T_EXPECT(json_string_length(json_object_get(st0, "job_id")) > 0);
	json_decref(j);
	free(text);
	mer_agent_close(a);
	env_free(&e);
}

/* Review 6 and 7: a stage still queued is not federation_used; a launch
 * into a pool the site lacks is refused. */
static void test_queued_not_used_and_unknown_pool(void)
{
	struct env e;
	struct mer_agent *a = NULL;
	json_t *cmd, *reply = NULL, *s = NULL;
	enum mer_agent_stage_state state;
	char err[512] = "";

	T_OK(env_setup(&e, NULL));
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_probe(a));
	/* 4 x 24 a100 cannot fit next to the background load */
	cmd = launch_cmd("c1", "big", 1e6, 0);
	json_object_set_new(json_object_get(cmd, "stage"), "gpus",
			    json_integer(24));
	json_object_set_new(json_object_get(cmd, "stage"), "replicas",
			    json_integer(4));
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EXPECT(json_is_true(json_object_get(reply, "ok")));
	json_decref(reply);
	json_decref(cmd);
	mer_agent_tick(a);
	T_OK(mer_agent_stage_get(a, "big", &state, NULL, NULL, 0));
	T_EQ_INT(state, MER_AGENT_STAGE_PENDING);
	T_OK(mer_agent_probe(a));
	T_OK(mer_agent_summary(a, &s));
	T_EXPECT(res(json_object_get(s, "site"), "gpu", "gpu:a100",
		     "federation_used") == 0);
	json_decref(s);

	cmd = launch_cmd("c2", "lost-pool", 1, 0);
	json_object_set_new(json_object_get(cmd, "stage"), "pool",
			    json_string("nope"));
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EXPECT(json_is_false(json_object_get(reply, "ok")));
	T_EQ_STR(json_string_value(
		     json_object_get(json_object_get(reply, "error"), "code")),
		 mer_errname(MER_ENOTFOUND));
	json_decref(reply);
	json_decref(cmd);
	T_EQ_INT(mer_agent_stage_get(a, "lost-pool", NULL, NULL, NULL, 0),
		 MER_ENOTFOUND);
	mer_agent_close(a);
	env_free(&e);
}

/* Review 9: a launch of a stage that has ended answers with its state, not
 * "already_running"; attempt-scoped ids ("#2") are a new stage. */
static void test_relaunch_finished(void)
{
	struct env e;
	struct mer_agent *a = NULL;
	json_t *cmd, *reply = NULL;
	char err[512] = "", job1[128], job2[128];
	int code;

	T_OK(env_setup(&e, NULL));
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	cmd = launch_cmd("c1", "job7/eval#1", 1, 4);
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EQ_STR(json_string_value(json_object_get(reply, "result")),
		 "launched");
	json_decref(reply);
	T_EQ_INT(wait_final(a, "job7/eval#1", &code), MER_AGENT_STAGE_FAILED);
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EXPECT(json_is_true(json_object_get(reply, "ok")));
	T_EQ_STR(json_string_value(json_object_get(reply, "result")),
		 "already_finished");
	T_EQ_STR(json_string_value(json_object_get(reply, "state")), "failed");
	T_EQ_INT(json_integer_value(json_object_get(reply, "exit_code")), 4);
	json_decref(reply);
	json_decref(cmd);
	T_EQ_INT(mer_agent_stage_count(a), 1);
	/* the next attempt: its own job and its own event ids */
	cmd = launch_cmd("c2", "job7/eval#2", 1, 0);
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EQ_STR(json_string_value(json_object_get(reply, "result")),
		 "launched");
	json_decref(reply);
	json_decref(cmd);
	T_EQ_INT(wait_final(a, "job7/eval#2", &code),
		 MER_AGENT_STAGE_SUCCEEDED);
	T_OK(mer_agent_stage_get(a, "job7/eval#1", NULL, NULL, job1,
				 sizeof(job1)));
	T_OK(mer_agent_stage_get(a, "job7/eval#2", NULL, NULL, job2,
				 sizeof(job2)));
	T_EXPECT(strcmp(job1, job2) != 0);
	T_EQ_INT(has_event(a, "job7/eval#1", "failed", NULL), 1);
	T_EQ_INT(has_event(a, "job7/eval#2", "finished", NULL), 1);
	mer_agent_close(a);
	env_free(&e);
}

static json_t *dataset_named(json_t *s, const char *name)
{
	size_t i;
	json_t *d;

	json_array_foreach (
	    json_object_get(json_object_get(s, "site"), "datasets"), i, d) {
		if (!strcmp(json_string_value(json_object_get(d, "name")),
			    name))
			return d;
	}
	return NULL;
}

/* Review 12: a directory too big to walk is present with its configured
 * size ("size not verified"), not missing; sizes are cached for a TTL. */
static void test_big_dataset_and_cache(void)
{
	struct env e;
	struct mer_agent *a = NULL;
	json_t *s = NULL, *d, *u;
	char err[512] = "", f2[700];

	T_OK(env_setup(&e, NULL));
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_probe(a));
	mer_agent_summary_walk_limits(1, 600);
	T_OK(mer_agent_summary(a, &s));
	d = dataset_named(s, "present");
	T_ASSERT(d != NULL);
	T_EQ_INT(json_integer_value(json_object_get(d, "bytes")), 1);
	u = json_object_get(json_object_get(s, "status"),
			    "datasets_unverified");
	T_EQ_INT(json_array_size(u), 1);
	T_CONTAINS(
	    json_string_value(json_object_get(json_array_get(u, 0), "reason")),
	    "size not verified");
	T_EQ_INT(json_array_size(json_object_get(json_object_get(s, "status"),
						 "datasets_missing")),
		 1); /* only "gone" */
	json_decref(s);

	mer_agent_summary_walk_limits(100000, 600);
	T_OK(mer_agent_summary(a, &s));
	T_EQ_INT(json_integer_value(
		     json_object_get(dataset_named(s, "present"), "bytes")),
		 1000);
	json_decref(s);
	/* a new file: the cached size stands until the TTL runs out */
	snprintf(f2, sizeof(f2), "%s/part-1", e.data);
	T_OK(write_file(f2, "12345"));
	T_OK(mer_agent_summary(a, &s));
	T_EQ_INT(json_integer_value(
		     json_object_get(dataset_named(s, "present"), "bytes")),
		 1000);
	json_decref(s);
	mer_agent_summary_walk_limits(100000, 0);
	T_OK(mer_agent_summary(a, &s));
	T_EQ_INT(json_integer_value(
		     json_object_get(dataset_named(s, "present"), "bytes")),
		 1005);
	json_decref(s);
	mer_agent_summary_walk_limits(100000, 600);
	mer_agent_close(a);
	env_free(&e);
}

/* Leader epochs (PROTOCOL.md): a command of an older epoch is refused with
 * a clear error, across a restart of the agent; commands without an epoch
 * (older brokers) are taken. */
static void test_epoch_refuses_older_leader(void)
{
	struct env e;
	struct mer_agent *a = NULL;
	json_t *cmd, *reply = NULL;
	char err[512] = "";

	T_OK(env_setup(&e, NULL));
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	cmd = launch_cmd("e1", "ep/one", 1, 0);
	json_object_set_new(cmd, "epoch", json_integer(40));
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EXPECT(json_is_true(json_object_get(reply, "ok")));
	json_decref(reply);
	json_decref(cmd);
	mer_agent_close(a);

	/* Restarted: the highest epoch comes back from the state file. */
	a = NULL;
	T_OK(mer_agent_open(&e.cfg, &a, err, sizeof(err)));
	cmd = launch_cmd("e2", "ep/two", 1, 0);
	json_object_set_new(cmd, "epoch", json_integer(39));
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EXPECT(json_is_false(json_object_get(reply, "ok")));
	T_EQ_STR(json_string_value(
		     json_object_get(json_object_get(reply, "error"), "code")),
		 "not_leader");
	T_CONTAINS(json_string_value(json_object_get(
		       json_object_get(reply, "error"), "message")),
		   "epoch 39");
	json_decref(reply);
	json_decref(cmd);
	T_EQ_INT(mer_agent_stage_count(a), 1); /* ep/two never ran */
	cmd = json_pack("{s:s, s:s, s:s, s:i}", "id", "e3", "type", "cancel",
			"stage_id", "ep/one", "epoch", 12);
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EXPECT(json_is_false(json_object_get(reply, "ok")));
	json_decref(reply);
	json_decref(cmd);
	/* The same or a newer epoch, or none at all, is taken. */
	cmd = launch_cmd("e4", "ep/three", 1, 0);
	json_object_set_new(cmd, "epoch", json_integer(41));
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EXPECT(json_is_true(json_object_get(reply, "ok")));
	json_decref(reply);
	json_decref(cmd);
	cmd = launch_cmd("e5", "ep/four", 1, 0);
	T_OK(mer_agent_command(a, cmd, &reply));
	T_EXPECT(json_is_true(json_object_get(reply, "ok")));
	json_decref(reply);
	json_decref(cmd);
	T_EQ_INT(mer_agent_stage_count(a), 3);
	mer_agent_close(a);
	env_free(&e);
}

static const struct t_case cases[] = {
    {"summary_shape_and_fed", test_summary_shape_and_fed},
    {"datasets_present_and_missing", test_datasets_present_and_missing},
    {"all_pools_when_share_empty", test_all_pools_when_share_empty},
    {"stage_runs", test_stage_runs},
    {"cancel", test_cancel},
    {"restart_finds_stages", test_restart_finds_stages},
    {"crash_between_save_and_submit", test_crash_between_save_and_submit},
    {"unreachable_and_malformed", test_unreachable_and_malformed},
    {"bad_launch", test_bad_launch},
    {"path_size", test_path_size},
    {"readonly_and_lock", test_readonly_and_lock},
    {"reconcile_resubmit_saved", test_reconcile_resubmit_saved},
    {"queued_not_used_and_unknown_pool", test_queued_not_used_and_unknown_pool},
    {"relaunch_finished", test_relaunch_finished},
    {"big_dataset_and_cache", test_big_dataset_and_cache},
    {"epoch_refuses_older_leader", test_epoch_refuses_older_leader},
};

T_MAIN("agent_sim", cases)
