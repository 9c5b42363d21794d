/*
 * Proves the one-node test Slurm of deploy/slurm-up.sh works: jobs submitted
 * with sbatch and through slurmrestd really run, exit codes and GRES come
 * back as the agent's Slurm adapter will read them, cancel works, and
 * deploy/slurm-down.sh stops everything. Not a test of the adapter itself.
 *
 * The cases share one cluster: "up" starts it, "down" stops it, and a
 * watchdog process stops it too if this program dies before "down" (a crash,
 * a failed assertion in between, or the suite's time limit).
 */
#include "common/err.h"
#include "tests/harness.h"
#include "tests/lib/proc.h"
#include "tests/lib/slurm_cluster.h"

#include <curl/curl.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* The REST shapes checked here (and written down in docs/SLURM.md) are those
 * of Debian 12's slurmrestd 22.05. */
#define REST_VERSION "v0.0.38"
#define JOB_WAIT_MS 60000

static struct {
	struct t_slurm s; /* the cluster, as slurm-up.sh described it */
	char reason[512]; /* why the cases after "up" cannot run */
	unsigned token;	  /* makes file contents unique to this run */
} g;

/* ------------------------------------------------------------ helpers */

/* snprintf that reports truncation (MER_ETOOBIG), so a command or request
 * body cut short fails the case instead of running half a command. */
static int fmt(char *buf, size_t n, const char *f, ...)
    __attribute__((format(printf, 3, 4)));
static int fmt(char *buf, size_t n, const char *f, ...)
{
	va_list ap;
	int len;

	va_start(ap, f);
	len = vsnprintf(buf, n, f, ap);
	va_end(ap);
	return (len < 0 || (size_t)len >= n) ? MER_ETOOBIG : 0;
}

/* Last line of a text, for error messages. */
static void last_line(const char *text, char *out, size_t n)
{
	const char *end, *start;

	fmt(out, n, "(no output)");
	if (!text)
		return;
	end = text + strlen(text);
	while (end > text && end[-1] == '\n')
		end--;
	for (start = end; start > text && start[-1] != '\n'; start--)
		;
	if (end > start)
		fmt(out, n, "%.*s", (int)(end - start), start);
}

static int parse_long(const char *s, long *out)
{
	char *end;
	long v;

	if (!s || !*s)
		return MER_EINVAL;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end)
		return MER_EINVAL;
	*out = v;
	return 0;
}

/* ------------------------------------------------------------ REST */

struct body {
	char *data;
	size_t len;
};

static size_t on_body(char *ptr, size_t size, size_t nmemb, void *arg)
{
	struct body *b = arg;
	size_t n = size * nmemb;
	char *nd;

	if (b->len + n > (8u << 20))
		return 0; /* refuse absurd replies */
	nd = realloc(b->data, b->len + n + 1);
	if (!nd)
		return 0;
	memcpy(nd + b->len, ptr, n);
	b->data = nd;
	b->len += n;
	b->data[b->len] = '\0';
	return n;
}

/*
 * One request to slurmrestd over its unix socket. *reply gets the parsed
 * JSON body (NULL if the body is not JSON) and *http the status code.
 */
static int rest(const char *method, const char *path, const char *json_body,
		long *http, json_t **reply)
{
	CURL *c = curl_easy_init();
	struct curl_slist *hdrs = NULL;
	struct body b = {NULL, 0};
	char url[512];
	int rc = 0;

	*reply = NULL;
	*http = 0;
	if (!c)
		return MER_ENOMEM;
	fmt(url, sizeof(url), "http://localhost%s", path);
	curl_easy_setopt(c, CURLOPT_UNIX_SOCKET_PATH, g.s.sock);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 15L);
	curl_easy_setopt(c, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, &b);
	if (json_body) {
		hdrs =
		    curl_slist_append(hdrs, "Content-Type: application/json");
		curl_easy_setopt(c, CURLOPT_HTTPHEADER, hdrs);
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, json_body);
	}
	if (curl_easy_perform(c) != CURLE_OK) {
		rc = MER_EUNREACHABLE;
		goto out;
	}
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, http);
	if (b.data)
		*reply = json_loadb(b.data, b.len, 0, NULL);
out:
	free(b.data);
	curl_slist_free_all(hdrs);
	curl_easy_cleanup(c);
	return rc;
}

static const char *jstr(const json_t *o, const char *key)
{
	return json_string_value(json_object_get(o, key));
}

static long long jint(const json_t *o, const char *key)
{
	return json_integer_value(json_object_get(o, key));
}

/* GET /slurm/<v>/job/<id> and return jobs[0] (a new reference) or NULL. */
static json_t *rest_job(long id)
{
	char path[128];
	long http;
	json_t *r, *job;

	fmt(path, sizeof(path), "/slurm/" REST_VERSION "/job/%ld", id);
	if (rest("GET", path, NULL, &http, &r) != 0 || !r)
		return NULL;
	job = json_array_get(json_object_get(r, "jobs"), 0);
	if (job)
		json_incref(job);
	json_decref(r);
	return job;
}

static int state_is_final(const char *s)
{
	static const char *const final[] = {
	    "COMPLETED", "FAILED",	  "CANCELLED", "TIMEOUT", "NODE_FAIL",
	    "PREEMPTED", "OUT_OF_MEMORY", "BOOT_FAIL", "DEADLINE"};

	for (size_t i = 0; s && i < sizeof(final) / sizeof(final[0]); i++)
		if (strcmp(s, final[i]) == 0)
			return 1;
	return 0;
}

/* Polls the job through slurmrestd until its state is want (or, with want
 * NULL, any final state). Returns the job object (a new reference) or NULL
 * on timeout; *last gets the last state seen. */
static json_t *rest_wait_job(long id, const char *want, char *last, size_t n)
{
	long long end = t_now_ms() + JOB_WAIT_MS;

	fmt(last, n, "(never seen)");
	while (t_now_ms() < end) {
		json_t *job = rest_job(id);
		const char *st = job ? jstr(job, "job_state") : NULL;
		if (st) {
			fmt(last, n, "%s", st);
			if (want ? strcmp(st, want) == 0 : state_is_final(st))
				return job;
			if (want && state_is_final(st)) {
				json_decref(job);
				return NULL;
			}
		}
		json_decref(job);
		t_sleep_ms(200);
	}
	return NULL;
}

/* ------------------------------------------------------------ sbatch side */

/* Value of Key= in `scontrol show job -o` output, up to the next space. */
static int scontrol_field(const char *line, const char *key, char *out,
			  size_t n)
{
	char pat[64];
	const char *p;
	size_t len;

	fmt(pat, sizeof(pat), " %s=", key);
	p = strstr(line, pat);
	if (!p)
		return MER_ENOTFOUND;
	p += strlen(pat);
	len = strcspn(p, " \n");
	if (len >= n)
		return MER_ETOOBIG;
	memcpy(out, p, len);
	out[len] = '\0';
	return 0;
}

/* Polls `scontrol show job` until the job is in a final state; fills state
 * and exit code ("3:0"). */
static int scontrol_wait_final(long id, char *state, size_t sn, char *exit_code,
			       size_t en)
{
	long long end = t_now_ms() + JOB_WAIT_MS;
	char cmd[128];

	fmt(cmd, sizeof(cmd), "scontrol show job -o %ld 2>&1", id);
	fmt(state, sn, "(never seen)");
	while (t_now_ms() < end) {
		char *out;
		int st;
		if (t_run_cmd(cmd, &out, &st) == 0 && st == 0 &&
		    scontrol_field(out, "JobState", state, sn) == 0 &&
		    state_is_final(state)) {
			int rc = scontrol_field(out, "ExitCode", exit_code, en);
			free(out);
			return rc;
		}
		free(out);
		t_sleep_ms(200);
	}
	return MER_ETIMEDOUT;
}

/* sbatch --parsable ARGS; returns the job id. */
static int sbatch(const char *args, long *id)
{
	char cmd[2048], *out;
	int st, rc;

	fmt(cmd, sizeof(cmd), "sbatch --parsable -p '%s' -D '%s' %s 2>&1",
	    g.s.partition, g.s.job_dir, args);
	rc = t_run_cmd(cmd, &out, &st);
	if (rc != 0)
		return rc;
	out[strcspn(out, "\n;")] = '\0';
	if (st != 0 || parse_long(out, id) != 0) {
		printf("    sbatch failed (exit %d): %s\n", st, out);
		free(out);
		return MER_EREMOTE;
	}
	free(out);
	return 0;
}

/* One line of `sacct --completion` (the jobcomp/filetxt record):
 * "id|state|exit". */
static int sacct_line(long id, char *out, size_t n)
{
	char cmd[256], *text;
	int st, rc;

	fmt(cmd, sizeof(cmd),
	    "sacct --completion -n -P -j %ld -o jobid,state,exitcode 2>&1", id);
	rc = t_run_cmd(cmd, &text, &st);
	if (rc != 0)
		return rc;
	text[strcspn(text, "\n")] = '\0';
	fmt(out, n, "%s", text);
	free(text);
	return st == 0 ? 0 : MER_EREMOTE;
}

/* ------------------------------------------------------------ up/down */

static int need_cluster(void)
{
	if (g.s.up)
		return 1;
	t_skip("%s", g.reason[0] ? g.reason : "the cluster is not up");
	return 0;
}

static void test_up(void)
{
	char cmd[2048], tail[400];
	char *out = NULL;
	int rv, st;

	rv = t_slurm_up(&g.s, "slurm-test",
			"--gpus 4 --gpu-model a100 --partition meridian", &st);
	if (rv == MER_ENOTFOUND) {
		fmt(g.reason, sizeof(g.reason),
		    "%s/deploy/slurm-up.sh not found (set MERIDIAN_TOP)",
		    g.s.top);
		t_fail(__FILE__, __LINE__, "%s", g.reason);
		return;
	}
	last_line(g.s.up_log, tail, sizeof(tail));
	if (rv == MER_EUNSUPPORTED) {
		/* Not root, or the packages cannot be installed here. */
		fmt(g.reason, sizeof(g.reason), "%s", tail);
		t_skip("%s", g.reason);
		return;
	}
	if (rv) {
		if (g.s.up_log)
			printf("%s", g.s.up_log);
		fmt(g.reason, sizeof(g.reason),
		    "slurm-up.sh failed (exit %d): %s", st, tail);
		t_fail(__FILE__, __LINE__, "%s", g.reason);
		return;
	}
	/* sbatch, scontrol and sacct find this cluster through SLURM_CONF. */
	setenv("SLURM_CONF", g.s.conf, 1);
	g.token = (unsigned)getpid() ^ (unsigned)t_now_ms();

	T_EQ_STR(g.s.partition, "meridian");
	T_EQ_STR(g.s.model, "a100");
	T_EQ_INT(g.s.gpus, 4);
	T_EXPECT(g.s.cpus >= 1 && g.s.cpus <= sysconf(_SC_NPROCESSORS_ONLN));
	T_EXPECT(g.s.memory_mb >= 256);
	T_EXPECT(access(g.s.conf, R_OK) == 0);
	T_CONTAINS(g.s.versions, REST_VERSION);
	/* Everything lives in the state dir. */
	T_EXPECT(strncmp(g.s.conf, g.s.state, strlen(g.s.state)) == 0);
	T_EXPECT(strncmp(g.s.sock, g.s.state, strlen(g.s.state)) == 0);

	/* A second up on a running cluster only repeats its settings. */
	T_OK(fmt(cmd, sizeof(cmd),
		 "'%s/deploy/slurm-up.sh' --state '%s' 2>/dev/null", g.s.top,
		 g.s.state));
	T_OK(t_run_cmd(cmd, &out, &st));
	T_EQ_INT(st, 0);
	T_CONTAINS(out, g.s.sock);
	free(out);
}

static void test_openapi_paths(void)
{
	long http;
	json_t *r;

	if (!need_cluster())
		return;
	T_OK(rest("GET", "/openapi", NULL, &http, &r));
	T_EQ_INT(http, 200);
	T_ASSERT(r != NULL);
	json_t *paths = json_object_get(r, "paths");
	T_EXPECT(json_object_get(paths, "/slurm/" REST_VERSION "/job/submit") !=
		 NULL);
	T_EXPECT(json_object_get(paths, "/slurm/" REST_VERSION
					"/job/{job_id}") != NULL);
	T_EXPECT(json_object_get(paths, "/slurm/" REST_VERSION "/nodes") !=
		 NULL);
	T_EXPECT(json_object_get(paths, "/slurm/" REST_VERSION "/partitions") !=
		 NULL);
	/* The openapi/dbv* plugins need slurmdbd and are not loaded. */
	T_EXPECT(json_object_get(paths, "/slurmdb/" REST_VERSION "/jobs") ==
		 NULL);
	json_decref(r);

	T_OK(rest("GET", "/slurm/" REST_VERSION "/ping", NULL, &http, &r));
	T_EQ_INT(http, 200);
	T_ASSERT(r != NULL);
	T_EQ_STR(jstr(json_array_get(json_object_get(r, "pings"), 0), "ping"),
		 "UP");
	T_EQ_STR(
	    jstr(json_object_get(json_object_get(r, "meta"), "plugin"), "type"),
	    "openapi/" REST_VERSION);
	json_decref(r);
}

static void test_node_and_partition(void)
{
	long http;
	json_t *r;
	char gres[96];

	if (!need_cluster())
		return;
	T_OK(rest("GET", "/slurm/" REST_VERSION "/nodes", NULL, &http, &r));
	T_EQ_INT(http, 200);
	T_ASSERT(r != NULL);
	json_t *nodes = json_object_get(r, "nodes");
	T_EQ_INT(json_array_size(nodes), 1);
	json_t *n = json_array_get(nodes, 0);
	fmt(gres, sizeof(gres), "gpu:%s:%ld", g.s.model, g.s.gpus);
	T_EQ_STR(jstr(n, "name"), g.s.node);
	T_EQ_STR(jstr(n, "state"), "idle");
	T_EQ_STR(jstr(n, "gres"), gres);
	fmt(gres, sizeof(gres), "gpu:%s:0", g.s.model);
	T_CONTAINS(jstr(n, "gres_used"), gres);
	fmt(gres, sizeof(gres), "gpu:%s:%ld", g.s.model, g.s.gpus);
	T_EQ_INT(jint(n, "cpus"), g.s.cpus);
	T_EQ_INT(jint(n, "real_memory"), g.s.memory_mb);
	T_EQ_INT(jint(n, "alloc_cpus"), 0);
	json_decref(r);

	T_OK(
	    rest("GET", "/slurm/" REST_VERSION "/partitions", NULL, &http, &r));
	T_EQ_INT(http, 200);
	T_ASSERT(r != NULL);
	json_t *p = json_array_get(json_object_get(r, "partitions"), 0);
	T_EQ_STR(jstr(p, "name"), g.s.partition);
	T_EQ_STR(jstr(p, "nodes"), g.s.node);
	T_EQ_STR(jstr(p, "state"), "UP");
	T_EQ_INT(jint(p, "total_cpus"), g.s.cpus);
	T_EQ_INT(jint(p, "total_nodes"), 1);
	json_decref(r);

	/* The same through the command line tools. */
	char *out;
	int st;
	T_OK(t_run_cmd("sinfo -h -o '%P %T %G %c' 2>&1", &out, &st));
	T_EQ_INT(st, 0);
	char want[160];
	T_OK(fmt(want, sizeof(want), "%s* idle %s %ld", g.s.partition, gres,
		 g.s.cpus));
	T_CONTAINS(out, want);
	free(out);
}

static void test_sbatch_job_runs(void)
{
	char args[1600], path[700], go[700], state[64], code[32], line[256];
	char want[64], *text = NULL, *out = NULL;
	long id;
	int st;

	if (!need_cluster())
		return;
	T_OK(fmt(path, sizeof(path), "%s/sbatch-%u.txt", g.s.job_dir, g.token));
	T_OK(fmt(go, sizeof(go), "%s/sbatch-%u.go", g.s.job_dir, g.token));
	/* The job waits for the go file, so squeue must see it running. */
	T_OK(fmt(args, sizeof(args),
		 "-J mer-sbatch -o '%s/sbatch-%%j.out' -t 5 --wrap "
		 "'while [ ! -e %s ]; do sleep 0.1; done; "
		 "echo ran-%u > %s'",
		 g.s.job_dir, go, g.token, path));
	T_OK(sbatch(args, &id));

	long long end = t_now_ms() + JOB_WAIT_MS;
	char cmd[128];
	T_OK(fmt(cmd, sizeof(cmd), "squeue -h -j %ld -o %%T 2>&1", id));
	for (;;) {
		T_OK(t_run_cmd(cmd, &out, &st));
		out[strcspn(out, "\n")] = '\0';
		if (strcmp(out, "RUNNING") == 0 || t_now_ms() > end)
			break;
		free(out);
		out = NULL;
		t_sleep_ms(200);
	}
	T_EQ_STR(out, "RUNNING");
	free(out);
	FILE *f = fopen(go, "w");
	T_ASSERT(f != NULL);
	fclose(f);

	T_OK(scontrol_wait_final(id, state, sizeof(state), code, sizeof(code)));
	T_EQ_STR(state, "COMPLETED");
	T_EQ_STR(code, "0:0");
	T_OK(t_read_file(path, &text, NULL));
	T_OK(fmt(want, sizeof(want), "ran-%u\n", g.token));
	T_EQ_STR(text, want);
	free(text);

	/* No slurmdbd: sacct reads the jobcomp/filetxt record. */
	T_OK(sacct_line(id, line, sizeof(line)));
	T_OK(fmt(want, sizeof(want), "%ld|COMPLETED|0:0", id));
	T_EQ_STR(line, want);
	unlink(go);
}

static void test_exit_code_3(void)
{
	char state[64], code[32], line[256], want[64], body[1024];
	long id, http;
	json_t *r, *job;

	if (!need_cluster())
		return;
	T_OK(sbatch("-J mer-exit3 -o /dev/null --wrap 'exit 3'", &id));
	T_OK(scontrol_wait_final(id, state, sizeof(state), code, sizeof(code)));
	T_EQ_STR(state, "FAILED");
	T_EQ_STR(code, "3:0");
	T_OK(sacct_line(id, line, sizeof(line)));
	T_OK(fmt(want, sizeof(want), "%ld|FAILED|3:0", id));
	T_EQ_STR(line, want);

	/* slurmrestd's exit_code is the raw wait status: 3 << 8. */
	job = rest_job(id);
	T_ASSERT(job != NULL);
	T_EQ_STR(jstr(job, "job_state"), "FAILED");
	int ws = (int)jint(job, "exit_code");
	T_EQ_INT(ws, 768);
	T_EXPECT(WIFEXITED(ws) && WEXITSTATUS(ws) == 3);
	json_decref(job);

	/* The same job submitted through slurmrestd. */
	T_OK(fmt(body, sizeof(body),
		 "{\"job\":{\"name\":\"mer-rest-exit3\",\"partition\":\"%s\","
		 "\"current_working_directory\":\"%s\",\"standard_output\":"
		 "\"/dev/null\",\"environment\":{\"PATH\":\"/usr/bin:/bin\"}},"
		 "\"script\":\"#!/bin/sh\\nexit 3\\n\"}",
		 g.s.partition, g.s.job_dir));
	T_OK(rest("POST", "/slurm/" REST_VERSION "/job/submit", body, &http,
		  &r));
	T_EQ_INT(http, 200);
	T_ASSERT(r != NULL);
	id = (long)jint(r, "job_id");
	json_decref(r);
	T_ASSERT(id > 0);
	job = rest_wait_job(id, NULL, state, sizeof(state));
	T_ASSERT(job != NULL);
	T_EQ_STR(jstr(job, "job_state"), "FAILED");
	ws = (int)jint(job, "exit_code");
	T_EXPECT(WIFEXITED(ws) && WEXITSTATUS(ws) == 3);
	json_decref(job);
}

static void test_rest_submit_with_gres(void)
{
	char body[2048], path[700], state[64], want[128], *text = NULL;
	long http, id;
	json_t *r, *job;

	if (!need_cluster())
		return;
	T_OK(fmt(path, sizeof(path), "%s/rest-%u.txt", g.s.job_dir, g.token));
	T_OK(fmt(body, sizeof(body),
		 "{\"job\":{\"name\":\"mer-stage-%u\",\"partition\":\"%s\","
		 "\"current_working_directory\":\"%s\","
		 "\"standard_output\":\"%s/rest-%%j.out\","
		 "\"environment\":{\"PATH\":\"/usr/bin:/bin\"},"
		 "\"gres\":\"gpu:%s:2\",\"cpus_per_task\":1,"
		 "\"memory_per_node\":256,\"time_limit\":5},"
		 "\"script\":\"#!/bin/sh\\n"
		 "echo \\\"$SLURM_GPUS_ON_NODE $(id -un)\\\" > %s\\n\"}",
		 g.token, g.s.partition, g.s.job_dir, g.s.job_dir, g.s.model,
		 path));
	T_OK(rest("POST", "/slurm/" REST_VERSION "/job/submit", body, &http,
		  &r));
	T_EQ_INT(http, 200);
	T_ASSERT(r != NULL);
	T_EQ_INT(json_array_size(json_object_get(r, "errors")), 0);
	id = (long)jint(r, "job_id");
	json_decref(r);
	T_ASSERT(id > 0);

	job = rest_wait_job(id, NULL, state, sizeof(state));
	T_ASSERT(job != NULL);
	T_EQ_STR(jstr(job, "job_state"), "COMPLETED");
	T_EQ_INT(jint(job, "exit_code"), 0);
	T_OK(fmt(want, sizeof(want), "mer-stage-%u", g.token));
	T_EQ_STR(jstr(job, "name"), want);
	T_OK(fmt(want, sizeof(want), "gres:gpu:%s:2", g.s.model));
	T_EQ_STR(jstr(job, "tres_per_node"), want);
	/* slurmrestd runs as nobody, so its jobs do too. */
	T_EQ_STR(jstr(job, "user_name"), "nobody");
	T_EQ_STR(jstr(job, "partition"), g.s.partition);
	json_decref(job);

	T_OK(t_read_file(path, &text, NULL));
	T_EQ_STR(text, "2 nobody\n");
	free(text);
}

static void test_rest_cancel_running(void)
{
	char body[1024], state[64], path[128];
	long http, id;
	json_t *r, *job;

	if (!need_cluster())
		return;
	T_OK(fmt(body, sizeof(body),
		 "{\"job\":{\"name\":\"mer-long-%u\",\"partition\":\"%s\","
		 "\"current_working_directory\":\"%s\",\"standard_output\":"
		 "\"/dev/null\",\"environment\":{\"PATH\":\"/usr/bin:/bin\"},"
		 "\"gres\":\"gpu:%s:1\",\"time_limit\":10},"
		 "\"script\":\"#!/bin/sh\\nsleep 600\\n\"}",
		 g.token, g.s.partition, g.s.job_dir, g.s.model));
	T_OK(rest("POST", "/slurm/" REST_VERSION "/job/submit", body, &http,
		  &r));
	T_EQ_INT(http, 200);
	T_ASSERT(r != NULL);
	id = (long)jint(r, "job_id");
	json_decref(r);
	T_ASSERT(id > 0);

	job = rest_wait_job(id, "RUNNING", state, sizeof(state));
	if (!job)
		printf("    job %ld last seen %s\n", id, state);
	T_ASSERT(job != NULL);
	json_decref(job);

	/* The node shows the GPU in use while the job runs. */
	T_OK(rest("GET", "/slurm/" REST_VERSION "/nodes", NULL, &http, &r));
	T_ASSERT(r != NULL);
	json_t *n = json_array_get(json_object_get(r, "nodes"), 0);
	char used[96];
	T_OK(fmt(used, sizeof(used), "gpu:%s:1(IDX:", g.s.model));
	T_CONTAINS(jstr(n, "gres_used"), used);
	T_EXPECT(jint(n, "alloc_cpus") >= 1);
	json_decref(r);

	T_OK(fmt(path, sizeof(path), "/slurm/" REST_VERSION "/job/%ld", id));
	T_OK(rest("DELETE", path, NULL, &http, &r));
	T_EQ_INT(http, 200);
	T_ASSERT(r != NULL);
	T_EQ_INT(json_array_size(json_object_get(r, "errors")), 0);
	json_decref(r);

	job = rest_wait_job(id, "CANCELLED", state, sizeof(state));
	if (!job)
		printf("    job %ld last seen %s\n", id, state);
	T_ASSERT(job != NULL);
	json_decref(job);

	/* The GPU comes back (once the job's cleanup on the node is done). */
	long long end = t_now_ms() + 30000;
	int freed = 0;
	while (!freed && t_now_ms() < end) {
		if (rest("GET", "/slurm/" REST_VERSION "/nodes", NULL, &http,
			 &r) == 0 &&
		    r) {
			n = json_array_get(json_object_get(r, "nodes"), 0);
			const char *used = jstr(n, "gres_used");
			char zero[96];
			T_OK(fmt(zero, sizeof(zero), "gpu:%s:0", g.s.model));
			freed = used && strncmp(used, zero, strlen(zero)) == 0;
		}
		json_decref(r);
		if (!freed)
			t_sleep_ms(200);
	}
	T_EXPECT(freed);
}

static void test_rest_error_shapes(void)
{
	char body[1024];
	long http;
	json_t *r, *e;

	if (!need_cluster())
		return;
	/* An unknown job: HTTP 500 (not 404) and error_number 2017. */
	T_OK(rest("GET", "/slurm/" REST_VERSION "/job/99999999", NULL, &http,
		  &r));
	T_EQ_INT(http, 500);
	T_ASSERT(r != NULL);
	e = json_array_get(json_object_get(r, "errors"), 0);
	T_EQ_INT(jint(e, "error_number"), 2017);
	T_EQ_STR(jstr(e, "error"), "Invalid job id specified");
	T_EQ_INT(json_array_size(json_object_get(r, "jobs")), 0);
	json_decref(r);

	/* More GPUs than the node has: refused at submit, error_code 2014. */
	T_OK(fmt(body, sizeof(body),
		 "{\"job\":{\"name\":\"mer-too-big\",\"partition\":\"%s\","
		 "\"current_working_directory\":\"%s\",\"environment\":"
		 "{\"PATH\":\"/bin\"},\"gres\":\"gpu:%s:%ld\"},"
		 "\"script\":\"#!/bin/sh\\ntrue\\n\"}",
		 g.s.partition, g.s.job_dir, g.s.model, g.s.gpus + 1));
	T_OK(rest("POST", "/slurm/" REST_VERSION "/job/submit", body, &http,
		  &r));
	T_EQ_INT(http, 500);
	T_ASSERT(r != NULL);
	e = json_array_get(json_object_get(r, "errors"), 0);
	T_EQ_INT(jint(e, "error_code"), 2014);
	T_EXPECT(json_object_get(r, "job_id") == NULL ||
		 jint(r, "job_id") == 0);
	json_decref(r);

	/* No environment: refused with 400. */
	T_OK(fmt(body, sizeof(body),
		 "{\"job\":{\"name\":\"mer-no-env\",\"partition\":\"%s\","
		 "\"current_working_directory\":\"%s\"},"
		 "\"script\":\"#!/bin/sh\\ntrue\\n\"}",
		 g.s.partition, g.s.job_dir));
	T_OK(rest("POST", "/slurm/" REST_VERSION "/job/submit", body, &http,
		  &r));
	T_EQ_INT(http, 400);
	T_ASSERT(r != NULL);
	T_EQ_STR(jstr(json_array_get(json_object_get(r, "errors"), 0), "error"),
		 "environment must be set");
	json_decref(r);
}

/* Reads a pid file; 0 when there is none. */
static pid_t pid_from(const char *dir, const char *name)
{
	char path[700], *text = NULL;
	long v = 0;

	fmt(path, sizeof(path), "%s/%s", dir, name);
	if (t_read_file(path, &text, NULL) != 0)
		return 0;
	text[strcspn(text, "\n")] = '\0';
	if (parse_long(text, &v) != 0)
		v = 0;
	free(text);
	return (pid_t)v;
}

/* A pid runs (and is not a zombie waiting to be reaped by init). */
static int pid_runs(pid_t pid)
{
	char path[64], *text = NULL;
	int runs = 0;

	fmt(path, sizeof(path), "/proc/%d/stat", (int)pid);
	if (t_read_file(path, &text, NULL) != 0)
		return 0;
	const char *p = strrchr(text, ')');
	runs = p && p[1] == ' ' && p[2] != 'Z';
	free(text);
	return runs;
}

static void test_down(void)
{
	static const char *const pidfiles[] = {
	    "run/slurmctld.pid", "run/slurmd.pid", "run/slurmrestd.pid",
	    "munge/munged.pid"};
	pid_t pids[4];
	int st;
	struct stat sb;

	if (!need_cluster())
		return;
	for (size_t i = 0; i < 4; i++) {
		pids[i] = pid_from(g.s.state, pidfiles[i]);
		T_EXPECT(pids[i] > 0 && pid_runs(pids[i]));
	}
	st = t_slurm_down(&g.s);
	T_EQ_INT(st, 0);
	for (size_t i = 0; i < 4; i++)
		if (pids[i] > 0 && pid_runs(pids[i]))
			t_fail(__FILE__, __LINE__, "%s (pid %d) still runs",
			       pidfiles[i], (int)pids[i]);
	T_EXPECT(stat(g.s.state, &sb) != 0);
	T_EXPECT(stat(g.s.sock, &sb) != 0);

	/* Down again finds nothing and succeeds. */
	T_EQ_INT(t_slurm_down(&g.s), 0);
}

static const struct t_case cases[] = {
    {"up", test_up},
    {"openapi_paths", test_openapi_paths},
    {"node_and_partition", test_node_and_partition},
    {"sbatch_job_runs", test_sbatch_job_runs},
    {"exit_code_3", test_exit_code_3},
    {"rest_submit_with_gres", test_rest_submit_with_gres},
    {"rest_cancel_running", test_rest_cancel_running},
    {"rest_error_shapes", test_rest_error_shapes},
    {"down", test_down},
};

int main(int argc, char **argv)
{
	int rc;

	/* A child's exit must not kill us while popen()/system() run. */
	signal(SIGPIPE, SIG_IGN);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	/* Cases depend on "up": a filter picks cases but always brings the
	 * cluster up first (and down at exit). */
	if (argc > 1 && !strstr("up", argv[1])) {
		static const struct t_case up_only[] = {{"up", test_up}};
		(void)t_run("slurm_env_setup", up_only, 1, 1, argv);
	}
	rc = t_run("slurm_env", cases, sizeof(cases) / sizeof(cases[0]), argc,
		   argv);
	/* The cluster must never outlive the program, even when "down" was
	 * filtered out or returned early (t_slurm_up's at-exit handler would
	 * do it too, after curl is gone). */
	if (g.s.up)
		t_slurm_down(&g.s);
	curl_global_cleanup();
	return rc;
}
