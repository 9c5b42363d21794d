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

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#define WAIT_MS 90000

static struct {
	int up;
	char reason[512];
	char top[1024];
	char state[256];
	char sock[512];
	char partition[64];
	char model[64];
	char job_dir[512];
	long cpus, gpus;
	int watchdog_fd;
	pid_t watchdog;
	unsigned token;
	struct mer_agent_cfg cfg;
	int have_cfg;
} g = {.watchdog_fd = -1};

/* Runs sh -c cmd; stdout into *out (malloc'd). */
static int run(const char *cmd, char **out, int *status)
{
	FILE *p = popen(cmd, "r");
	size_t n = 0, cap = 4096;
	char *buf = malloc(cap);
	size_t r;

	if (!p || !buf) {
		if (p)
			pclose(p);
		free(buf);
		return MER_EIO;
	}
	while ((r = fread(buf + n, 1, cap - n - 1, p)) > 0) {
		n += r;
		if (n + 1 == cap) {
			char *q = realloc(buf, cap * 2);
			if (!q)
				break;
			buf = q;
			cap *= 2;
		}
	}
	buf[n] = '\0';
	int st = pclose(p);
	*status = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
	*out = buf;
	return 0;
}

/* NAME='value' in slurm-up.sh's output. */
static int env_value(const char *text, const char *name, char *out, size_t n)
{
	char pat[80];
	const char *p, *e;

	snprintf(pat, sizeof(pat), "%s='", name);
	if (!(p = strstr(text, pat)))
		return MER_ENOTFOUND;
	p += strlen(pat);
	if (!(e = strchr(p, '\'')) || (size_t)(e - p) >= n)
		return MER_EPARSE;
	memcpy(out, p, (size_t)(e - p));
	out[e - p] = '\0';
	return 0;
}

static void down_cmd(char *cmd, size_t n)
{
	snprintf(cmd, n,
		 "'%s/deploy/slurm-down.sh' --state '%s' --purge "
		 ">/dev/null 2>&1",
		 g.top, g.state);
}

static void start_watchdog(void)
{
	int fds[2];
	char cmd[1400];
	pid_t pid;

	down_cmd(cmd, sizeof(cmd));
	if (pipe2(fds, O_CLOEXEC) != 0)
		return;
	fflush(stdout);
	pid = fork();
	if (pid < 0) {
		close(fds[0]);
		close(fds[1]);
		return;
	}
	if (pid == 0) {
		char c;
		ssize_t r;
		close(fds[1]);
		setsid();
		do
			r = read(fds[0], &c, 1);
		while (r < 0 && errno == EINTR);
		if (r == 1)
			_exit(0);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(127);
	}
	close(fds[0]);
	g.watchdog_fd = fds[1];
	g.watchdog = pid;
}

static void stop_watchdog(void)
{
	if (g.watchdog_fd >= 0) {
		ssize_t r = write(g.watchdog_fd, "x", 1);
		(void)r;
		close(g.watchdog_fd);
		g.watchdog_fd = -1;
	}
	if (g.watchdog > 0) {
		waitpid(g.watchdog, NULL, 0);
		g.watchdog = 0;
	}
}

static void down_at_exit(void)
{
	char cmd[1400];

	if (g.up) {
		down_cmd(cmd, sizeof(cmd));
		if (system(cmd) != 0)
			fprintf(stderr, "agent_slurm: slurm-down failed\n");
		g.up = 0;
	}
	stop_watchdog();
	if (g.have_cfg)
		mer_agent_cfg_free(&g.cfg);
	g.have_cfg = 0;
}

static int need_cluster(void)
{
	if (g.up && g.have_cfg)
		return 1;
	t_skip("%s", g.reason[0] ? g.reason : "the cluster is not up");
	return 0;
}

static void test_up(void)
{
	char tmpl[] = "/tmp/meridian-agent-slurm.XXXXXX";
	char cmd[2048], num[32], cfg[4096], err[512];
	const char *top = getenv("MERIDIAN_TOP");
	char *out = NULL;
	int st;

	snprintf(g.top, sizeof(g.top), "%s", top && *top ? top : ".");
	atexit(down_at_exit);
	snprintf(cmd, sizeof(cmd), "%s/deploy/slurm-up.sh", g.top);
	if (access(cmd, X_OK) != 0) {
		snprintf(g.reason, sizeof(g.reason),
			 "%.400s not found (set MERIDIAN_TOP)", cmd);
		t_fail(__FILE__, __LINE__, "%s", g.reason);
		return;
	}
	/* Under /tmp: slurmrestd runs as nobody and must traverse it. */
	T_ASSERT(mkdtemp(tmpl) != NULL);
	snprintf(g.state, sizeof(g.state), "%s", tmpl);
	snprintf(cmd, sizeof(cmd),
		 "'%s/deploy/slurm-up.sh' --state '%s' --gpus 4 --gpu-model "
		 "a100 --partition meridian 2>'%s.log'",
		 g.top, g.state, g.state);
	T_OK(run(cmd, &out, &st));
	if (st == 3) {
		char *log = NULL;
		snprintf(cmd, sizeof(cmd), "%s.log", g.state);
		t_read_file(cmd, &log, NULL);
		snprintf(g.reason, sizeof(g.reason),
			 "slurm cannot run here: %.400s", log ? log : "?");
		free(log);
		unlink(cmd);
		rmdir(g.state);
		free(out);
		t_skip("%s", g.reason);
		return;
	}
	if (st != 0) {
		char *log = NULL;
		snprintf(cmd, sizeof(cmd), "%s.log", g.state);
		t_read_file(cmd, &log, NULL);
		printf("%s\n", log ? log : "");
		free(log);
		snprintf(g.reason, sizeof(g.reason),
			 "slurm-up.sh failed (exit %d)", st);
		free(out);
		t_fail(__FILE__, __LINE__, "%s", g.reason);
		g.up = 1; /* let down_at_exit clean what was started */
		return;
	}
	snprintf(cmd, sizeof(cmd), "%s.log", g.state);
	unlink(cmd);
	g.up = 1;
	start_watchdog();
	T_OK(env_value(out, "SLURMRESTD_SOCKET", g.sock, sizeof(g.sock)));
	T_OK(env_value(out, "SLURM_PARTITION", g.partition,
		       sizeof(g.partition)));
	T_OK(env_value(out, "SLURM_GPU_MODEL", g.model, sizeof(g.model)));
	T_OK(env_value(out, "SLURM_JOB_DIR", g.job_dir, sizeof(g.job_dir)));
	T_OK(env_value(out, "SLURM_CPUS", num, sizeof(num)));
	g.cpus = strtol(num, NULL, 10);
	T_OK(env_value(out, "SLURM_GPUS", num, sizeof(num)));
	g.gpus = strtol(num, NULL, 10);
	free(out);
	g.token = (unsigned)getpid() ^ (unsigned)t_now_ms();
	snprintf(cfg, sizeof(cfg),
		 "{\"site\": {\"name\": \"slurm-a\", \"region\": "
		 "\"cn-north-1\"},"
		 " \"scheduler\": {\"kind\": \"slurm\", \"url\": \"unix://%s\","
		 " \"timeout\": \"20s\"},"
		 " \"prices\": {\"gpu_hour\": {\"%s\": 2.2}, \"core_hour\": "
		 "0.01},"
		 " \"agent\": {\"state_file\": \"%s/agent.state\"}}",
		 g.sock, g.model, g.job_dir);
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
	snprintf(kind, sizeof(kind), "gpu:%s", g.model);
	T_EQ_STR(
	    json_string_value(json_object_get(
		json_array_get(json_object_get(site, "pools"), 0), "name")),
	    g.partition);
	T_EXPECT(res(site, g.partition, "cpu", "total") == g.cpus);
	T_EXPECT(res(site, g.partition, "cpu", "allocatable") == g.cpus);
	T_EXPECT(res(site, g.partition, kind, "total") == g.gpus);
	T_EXPECT(res(site, g.partition, kind, "free") == g.gpus);
	T_EXPECT(res(site, g.partition, "memory_mb", "total") > 0);
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
	st->workdir = strdup(g.job_dir);
	snprintf(out, sizeof(out), "%s/stage-%%j.out", g.job_dir);
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
	snprintf(path, sizeof(path), "%s/hello-%u.txt", g.job_dir, g.token);
	snprintf(want, sizeof(want), "hello %u", g.token);
	snprintf(cmd, sizeof(cmd), "echo \"%s $SLURM_GPUS_ON_NODE\" > %s", want,
		 path);
	stage(&st, id, cmd);
	snprintf(st.gpu_model, sizeof(st.gpu_model), "%s", g.model);
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
	snprintf(path, sizeof(path), "%s/ddp-%u.txt", g.job_dir, g.token);
	snprintf(cmd, sizeof(cmd),
		 "echo \"$SLURM_NTASKS $SLURM_MEM_PER_CPU "
		 "$SLURM_GPUS_ON_NODE\" > %s",
		 path);
	stage(&st, id, cmd);
	snprintf(st.gpu_model, sizeof(st.gpu_model), "%s", g.model);
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
	snprintf(path, sizeof(path), "%s/agent.state", g.job_dir);
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
	char cmd[1400];
	int st;

	if (!g.up) {
		t_skip("%s", g.reason[0] ? g.reason : "the cluster is not up");
		return;
	}
	down_cmd(cmd, sizeof(cmd));
	st = system(cmd);
	g.up = 0;
	stop_watchdog();
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
