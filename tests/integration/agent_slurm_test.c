/*
 * The Slurm adapter through the agent, on a real one-node Slurm started by
 * deploy/slurm-up.sh (slurmrestd on a unix socket, rest_auth/local). The
 * summary shows the partition, CPUs and GPUs by model; a shell stage runs
 * and its output file appears; a stage exiting 3 is failed with 3; a long
 * stage is cancelled; an agent restarted mid-stage finds its job again.
 * Skipped, with the reason, when the cluster cannot be started here (not
 * root, packages not installable); never passed silently.
 *
 * The cases share one cluster: "up" starts it and "down" stops it; an
 * atexit handler and a watchdog in its own session stop it too if the
 * program ends early or is killed.
 */
#include "common/err.h"
#include "policy/fed.h"
#include "site-agent/adapter.h"
#include "site-agent/config.h"
#include "site-agent/runner.h"
#include "tests/harness.h"
#include "tests/lib/proc.h"
#include "tests/lib/slurm_cluster.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define WAIT_MS 90000

static struct {
	struct t_slurm s;
	char reason[512];
	unsigned token;
	struct mer_agent_cfg cfg;
	int have_cfg;
} g;

static void free_cfg_at_exit(void)
{
	if (g.have_cfg)
		mer_agent_cfg_free(&g.cfg);
	g.have_cfg = 0;
}

static int need_cluster(void)
{
	if (g.s.up && g.have_cfg)
		return 1;
	t_skip("%s", g.reason[0] ? g.reason : "the cluster is not up");
	return 0;
}

static void test_up(void)
{
	char cfg[4096], err[512];
	int rv, st;

	atexit(free_cfg_at_exit);
	rv = t_slurm_up(&g.s, "agent-slurm",
			"--gpus 4 --gpu-model a100 --partition meridian", &st);
	if (rv == MER_ENOTFOUND) {
		snprintf(g.reason, sizeof(g.reason),
			 "%.400s/deploy/slurm-up.sh not found (set "
			 "MERIDIAN_TOP)",
			 g.s.top);
		t_fail(__FILE__, __LINE__, "%s", g.reason);
		return;
	}
	if (rv == MER_EUNSUPPORTED) {
		snprintf(g.reason, sizeof(g.reason),
			 "slurm cannot run here: %.400s",
			 g.s.up_log ? g.s.up_log : "?");
		t_skip("%s", g.reason);
		return;
	}
	if (rv) {
		printf("%s\n", g.s.up_log ? g.s.up_log : "");
		snprintf(g.reason, sizeof(g.reason),
			 "slurm-up.sh failed (exit %d): %s", st,
			 mer_strerror(rv));
		t_fail(__FILE__, __LINE__, "%s", g.reason);
		return;
	}
	g.token = (unsigned)getpid() ^ (unsigned)t_now_ms();
	snprintf(cfg, sizeof(cfg),
		 "{\"site\": {\"name\": \"slurm-a\", \"region\": "
		 "\"cn-north-1\"},"
		 " \"scheduler\": {\"kind\": \"slurm\", \"url\": \"unix://%s\","
		 " \"timeout\": \"20s\"},"
		 " \"prices\": {\"gpu_hour\": {\"%s\": 2.2}, \"core_hour\": "
		 "0.01},"
		 " \"agent\": {\"state_file\": \"%s/agent.state\"}}",
		 g.s.sock, g.s.model, g.s.job_dir);
	T_OK(mer_agent_cfg_load_string("slurm.json", cfg, &g.cfg, err,
				       sizeof(err)));
	g.have_cfg = 1;
}

static double res(json_t *site, const char *pool, const char *kind,
		  const char *field)
{
	size_t i;
	json_t *p;

	json_array_foreach (json_object_get(site, "pools"), i, p) {
		if (!strcmp(json_string_value(json_object_get(p, "name")),
			    pool))
			return json_number_value(json_object_get(
			    json_object_get(json_object_get(p, "resources"),
					    kind),
			    field));
	}
	return -1;
}

static void test_summary(void)
{
	struct mer_agent *a = NULL;
	json_t *s = NULL;
	char err[512] = "", kind[80];

	if (!need_cluster())
		return;
	T_OK(mer_agent_open(&g.cfg, &a, err, sizeof(err)));
	int rv = mer_agent_probe(a);
	if (rv)
		printf("    probe: %s\n", mer_agent_unhealthy_reason(a));
	T_EQ_INT(rv, 0);
	T_OK(mer_agent_summary(a, &s));
	json_t *site = json_object_get(s, "site");
	snprintf(kind, sizeof(kind), "gpu:%s", g.s.model);
	T_EQ_STR(
	    json_string_value(json_object_get(
		json_array_get(json_object_get(site, "pools"), 0), "name")),
	    g.s.partition);
	T_EXPECT(res(site, g.s.partition, "cpu", "total") == g.s.cpus);
	T_EXPECT(res(site, g.s.partition, "cpu", "allocatable") == g.s.cpus);
	T_EXPECT(res(site, g.s.partition, kind, "total") == g.s.gpus);
	T_EXPECT(res(site, g.s.partition, kind, "free") == g.s.gpus);
	T_EXPECT(res(site, g.s.partition, "memory_mb", "total") > 0);
	T_CONTAINS(json_string_value(json_object_get(
		       json_object_get(s, "status"), "scheduler_version")),
		   "v0.0.");
	if (mer_site_validate(site, NULL, err, sizeof(err)))
		t_fail(__FILE__, __LINE__, "fed.c refused: %s", err);
	json_decref(s);
	mer_agent_close(a);
}

static enum mer_agent_stage_state wait_final(struct mer_agent *a,
					     const char *id, int *code)
{
	enum mer_agent_stage_state st = MER_AGENT_STAGE_PENDING;
	long long end = t_now_ms() + WAIT_MS;

	while (t_now_ms() < end) {
		mer_agent_tick(a);
		if (mer_agent_stage_get(a, id, &st, code, NULL, 0) == 0 &&
		    mer_agent_stage_state_final(st))
			break;
		t_sleep_ms(250);
	}
	return st;
}

static void stage(struct mer_agent_stage *st, const char *id, const char *cmd)
{
	char out[700];

	memset(st, 0, sizeof(*st));
	snprintf(st->id, sizeof(st->id), "%s", id);
	st->command = strdup(cmd);
	st->workdir = strdup(g.s.job_dir);
	snprintf(out, sizeof(out), "%s/stage-%%j.out", g.s.job_dir);
	st->output = strdup(out);
	st->cpus = 1;
	st->memory_mb = 64;
	st->time_limit_s = 300;
}

static void test_stage_succeeds_with_output(void)
{
	struct mer_agent *a = NULL;
	struct mer_agent_stage st;
	char err[512] = "", id[96], cmd[1200], path[700], want[64];
	char *text = NULL;
	int already, code = -9;

	if (!need_cluster())
		return;
	snprintf(id, sizeof(id), "job-%u/hello", g.token);
	snprintf(path, sizeof(path), "%s/hello-%u.txt", g.s.job_dir, g.token);
	snprintf(want, sizeof(want), "hello %u", g.token);
	snprintf(cmd, sizeof(cmd), "echo \"%s $SLURM_GPUS_ON_NODE\" > %s", want,
		 path);
	stage(&st, id, cmd);
	snprintf(st.gpu_model, sizeof(st.gpu_model), "%s", g.s.model);
	st.gpus = 2;
	T_OK(mer_agent_open(&g.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_probe(a));
	int rv = mer_agent_launch(a, &st, &already, err, sizeof(err));
	if (rv)
		printf("    launch: %s\n", err);
	T_EQ_INT(rv, 0);
	T_EQ_INT(wait_final(a, id, &code), MER_AGENT_STAGE_SUCCEEDED);
	T_EQ_INT(code, 0);
	T_OK(t_read_file(path, &text, NULL));
	/* "hello <token> 2": GPUs on the node from gres gpu:<model>:2 */
	char want2[80];
	snprintf(want2, sizeof(want2), "%s 2\n", want);
	T_EQ_STR(text, want2);
	free(text);
	unlink(path);
	mer_agent_stage_clear(&st);
	mer_agent_close(a);
}

/* Review 5: replicas are tasks with per-task GPUs and memory; on the real
 * slurmrestd this checks the field names as well as the numbers. */
static void test_replicas_per_task(void)
{
	struct mer_agent *a = NULL;
	struct mer_agent_stage st;
	char err[512] = "", id[96], cmd[1200], path[700], want[128];
	char *text = NULL;
	int already, code = -9;

	if (!need_cluster())
		return;
	snprintf(id, sizeof(id), "job-%u/ddp#1", g.token);
	snprintf(path, sizeof(path), "%s/ddp-%u.txt", g.s.job_dir, g.token);
	snprintf(cmd, sizeof(cmd),
		 "echo \"$SLURM_NTASKS $SLURM_MEM_PER_CPU "
		 "$SLURM_GPUS_ON_NODE\" > %s",
		 path);
	stage(&st, id, cmd);
	snprintf(st.gpu_model, sizeof(st.gpu_model), "%s", g.s.model);
	st.gpus = 1;
	st.replicas = 2;
	T_OK(mer_agent_open(&g.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_probe(a));
	int rv = mer_agent_launch(a, &st, &already, err, sizeof(err));
	if (rv)
		printf("    launch: %s\n", err);
	T_EQ_INT(rv, 0);
	T_EQ_INT(wait_final(a, id, &code), MER_AGENT_STAGE_SUCCEEDED);
	T_OK(t_read_file(path, &text, NULL));
	/* 2 tasks, 64 MB per CPU (1 CPU per task), 1 GPU each: 2 on the
	 * node (a per-node gres of 1 would give 1) */
	snprintf(want, sizeof(want), "2 64 2\n");
	if (text)
		T_EQ_STR(text, want);
	free(text);
	unlink(path);
	mer_agent_stage_clear(&st);
	mer_agent_close(a);
}

static void test_stage_exit_3(void)
{
	struct mer_agent *a = NULL;
	struct mer_agent_stage st;
	char err[512] = "", id[96];
	int already, code = -9;

	if (!need_cluster())
		return;
	snprintf(id, sizeof(id), "job-%u/exit3", g.token);
	stage(&st, id, "exit 3");
	T_OK(mer_agent_open(&g.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_launch(a, &st, &already, err, sizeof(err)));
	T_EQ_INT(wait_final(a, id, &code), MER_AGENT_STAGE_FAILED);
	T_EQ_INT(code, 3);
	json_t *ev = mer_agent_events(a);
	char *evs = json_dumps(ev, 0);
	T_CONTAINS(evs, "\"failed\"");
	free(evs);
	json_decref(ev);
	mer_agent_stage_clear(&st);
	mer_agent_close(a);
}

static void test_long_stage_cancelled(void)
{
	struct mer_agent *a = NULL;
	struct mer_agent_stage st;
	char err[512] = "", id[96];
	int already, code;
	enum mer_agent_stage_state s = MER_AGENT_STAGE_PENDING;

	if (!need_cluster())
		return;
	snprintf(id, sizeof(id), "job-%u/long", g.token);
	stage(&st, id, "sleep 600");
	T_OK(mer_agent_open(&g.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_launch(a, &st, &already, err, sizeof(err)));
	long long end = t_now_ms() + WAIT_MS;
	while (t_now_ms() < end && s != MER_AGENT_STAGE_RUNNING) {
		mer_agent_tick(a);
		mer_agent_stage_get(a, id, &s, NULL, NULL, 0);
		t_sleep_ms(200);
	}
	T_EQ_INT(s, MER_AGENT_STAGE_RUNNING);
	T_OK(mer_agent_cancel(a, id, err, sizeof(err)));
	T_EQ_INT(wait_final(a, id, &code), MER_AGENT_STAGE_CANCELLED);
	mer_agent_stage_clear(&st);
	mer_agent_close(a);
}

static void test_restart_mid_stage(void)
{
	struct mer_agent *a = NULL;
	struct mer_agent_stage st;
	char err[512] = "", id[96], job1[64], job2[64];
	int already, code;
	enum mer_agent_stage_state s = MER_AGENT_STAGE_PENDING;

	if (!need_cluster())
		return;
	snprintf(id, sizeof(id), "job-%u/restart", g.token);
	stage(&st, id, "sleep 4");
	T_OK(mer_agent_open(&g.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_launch(a, &st, &already, err, sizeof(err)));
	T_OK(mer_agent_stage_get(a, id, NULL, NULL, job1, sizeof(job1)));
	long long end = t_now_ms() + WAIT_MS;
	while (t_now_ms() < end && s != MER_AGENT_STAGE_RUNNING) {
		mer_agent_tick(a);
		mer_agent_stage_get(a, id, &s, NULL, NULL, 0);
		t_sleep_ms(200);
	}
	T_EQ_INT(s, MER_AGENT_STAGE_RUNNING);
	mer_agent_close(a); /* the agent dies mid-stage */

	a = NULL;
	T_OK(mer_agent_open(&g.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_stage_get(a, id, NULL, NULL, job2, sizeof(job2)));
	T_EQ_STR(job2, job1);
	/* the broker repeats the launch: acknowledged, not run twice */
	T_OK(mer_agent_launch(a, &st, &already, err, sizeof(err)));
	T_EQ_INT(already, 1);
	T_EQ_INT(wait_final(a, id, &code), MER_AGENT_STAGE_SUCCEEDED);
	mer_agent_close(a);

	/* even without the state file the job is found by its name */
	char path[700];
	snprintf(path, sizeof(path), "%s/agent.state", g.s.job_dir);
	unlink(path);
	a = NULL;
	T_OK(mer_agent_open(&g.cfg, &a, err, sizeof(err)));
	T_OK(mer_agent_launch(a, &st, &already, err, sizeof(err)));
	T_OK(mer_agent_stage_get(a, id, NULL, NULL, job2, sizeof(job2)));
	T_EQ_STR(job2, job1);
	mer_agent_stage_clear(&st);
	mer_agent_close(a);
}

static void test_down(void)
{
	int st;

	if (!g.s.up) {
		t_skip("%s", g.reason[0] ? g.reason : "the cluster is not up");
		return;
	}
	st = t_slurm_down(&g.s);
	T_EQ_INT(st, 0);
	/* the agent now sees an unreachable scheduler, and lives (the purge
	 * took the state file's folder with it: run without one) */
	free(g.cfg.state_file);
	g.cfg.state_file = NULL;
	struct mer_agent *a = NULL;
	char err[512];
	json_t *s = NULL;
	T_OK(mer_agent_open(&g.cfg, &a, err, sizeof(err)));
	T_EQ_INT(mer_agent_probe(a), MER_EUNREACHABLE);
	T_OK(mer_agent_summary(a, &s));
	T_EQ_STR(json_string_value(
		     json_object_get(json_object_get(s, "site"), "health")),
		 "down");
	json_decref(s);
	mer_agent_close(a);
}

static const struct t_case cases[] = {
    {"up", test_up},
    {"summary", test_summary},
    {"stage_succeeds_with_output", test_stage_succeeds_with_output},
    {"replicas_per_task", test_replicas_per_task},
    {"stage_exit_3", test_stage_exit_3},
    {"long_stage_cancelled", test_long_stage_cancelled},
    {"restart_mid_stage", test_restart_mid_stage},
    {"down", test_down},
};

T_MAIN("agent_slurm", cases)
