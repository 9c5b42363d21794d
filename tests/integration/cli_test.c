/*
 * meridianctl end to end: the real bin/meridianctl process against a real
 * etcd and a real bin/meridian-broker (tests/integration/broker_fixture.h,
 * with the fixture federation's static sites). Checks each command's output
 * and exit code, that -o json parses, every error class's exit code
 * (usage, invalid input, auth, not found, server, unreachable), --help for
 * every command, and that tokens never reach the output unless asked for.
 */
#include "tests/integration/broker_fixture.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <pthread.h>
#include <sys/socket.h>
#include <unistd.h>

#include "common/err.h"
#include "tests/harness.h"

static struct bfx F;
static int started, start_failed;

static void teardown(void)
{
	if (started)
		bfx_free(&F);
}

static int setup(void)
{
	if (started)
		return 0;
	if (start_failed)
		return MER_EIO;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	if (bfx_start(&F, "\"placement\": {\"interval\": \"200ms\"},") != 0) {
		start_failed = 1;
		bfx_free(&F);
		return MER_EIO;
	}
	started = 1;
	atexit(teardown);
	return 0;
}

#define SETUP()                                                                \
	do {                                                                   \
		if (setup() != 0) {                                            \
			t_fail(__FILE__, __LINE__, "broker did not start");    \
			return;                                                \
		}                                                              \
	} while (0)

/* ---- running meridianctl ----------------------------------------------- */

struct run {
	int rc; /* exit status, or -1 when killed / not run */
	char *out, *err;
	json_t *json; /* stdout parsed, when it is JSON */
	pid_t pid;
	char outp[600], errp[600];
};

static const char *ctl_bin(char *buf, size_t n)
{
	const char *dir = getenv("MERIDIAN_BIN");
	snprintf(buf, n, "%s/meridianctl", dir && *dir ? dir : "bin");
	return buf;
}

static char *fixture(const char *name)
{
	static char paths[8][600];
	static int k;
	char *p = paths[k++ % 8];
	snprintf(p, 600, "%s/tests/fixtures/cli/%s", bfx_top(), name);
	return p;
}

/* Starts meridianctl with argv (NULL-terminated, without argv[0]); url
 * and token become MERIDIAN_URL / MERIDIAN_TOKEN (NULL: unset); stdin
 * from in_path (NULL: /dev/null). */
static int run_start(struct run *r, const char *url, const char *token,
		     const char *in_path, const char *const *args)
{
	static int seq;
	char bin[600];
	char *argv[32];
	int n = 0;

	memset(r, 0, sizeof(*r));
	r->rc = -1;
	argv[n++] = (char *)ctl_bin(bin, sizeof(bin));
	for (; args[n - 1] && n < 31; n++)
		argv[n] = (char *)args[n - 1];
	argv[n] = NULL;
	snprintf(r->outp, sizeof(r->outp), "%s/ctl-%d.out", F.dir, seq);
	snprintf(r->errp, sizeof(r->errp), "%s/ctl-%d.err", F.dir, seq++);
	fflush(stdout);
	pid_t pid = fork();
	if (pid < 0)
		return MER_EIO;
	if (pid == 0) {
		int o = open(r->outp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		int e = open(r->errp, O_WRONLY | O_CREAT | O_TRUNC, 0600);
		int i = open(in_path ? in_path : "/dev/null", O_RDONLY);
		if (o < 0 || e < 0 || i < 0)
			_exit(127);
		dup2(i, 0);
		dup2(o, 1);
		dup2(e, 2);
		unsetenv("MERIDIAN_URL");
		unsetenv("MERIDIAN_TOKEN");
		unsetenv("MERIDIAN_CA_FILE");
		unsetenv("MERIDIAN_LINK");
		if (url)
			setenv("MERIDIAN_URL", url, 1);
		if (token)
			setenv("MERIDIAN_TOKEN", token, 1);
		execv(argv[0], argv);
		_exit(127);
	}
	r->pid = pid;
	return 0;
}

/* Waits (up to timeout_ms, then kills) and reads what it wrote. */
static int run_finish(struct run *r, int timeout_ms)
{
	long long end = t_now_ms() + timeout_ms;
	int status = 0;

	for (;;) {
		pid_t w = waitpid(r->pid, &status, WNOHANG);
		if (w == r->pid)
			break;
		if (t_now_ms() > end) {
			kill(r->pid, SIGKILL);
			waitpid(r->pid, &status, 0);
			status = -1;
			break;
		}
		t_sleep_ms(10);
	}
	r->rc = status >= 0 && WIFEXITED(status) ? WEXITSTATUS(status) : -1;
	t_read_file(r->outp, &r->out, NULL);
	t_read_file(r->errp, &r->err, NULL);
	if (!r->out)
		r->out = strdup("");
	if (!r->err)
		r->err = strdup("");
	r->json = json_loads(r->out, 0, NULL);
	/* CLI_TEST_SHOW=1 shows what each run printed, for debugging. */
	if (getenv("CLI_TEST_SHOW"))
		printf("--- rc %d\n%s%s", r->rc, r->out, r->err);
	unlink(r->outp);
	unlink(r->errp);
	return 0;
}

static int run_as(struct run *r, const char *token, const char *const *args)
{
	int rv = run_start(r, F.base, token, NULL, args);
	return rv ? rv : run_finish(r, 60000);
}

static void run_clear(struct run *r)
{
	free(r->out);
	free(r->err);
	json_decref(r->json);
	memset(r, 0, sizeof(*r));
}

#define RUN(r, token, ...)                                                     \
	do {                                                                   \
		const char *a_[] = {__VA_ARGS__, NULL};                        \
		T_OK(run_as((r), (token), a_));                                \
	} while (0)

/* Errors are one line on stderr, naming the program. */
static int one_line_error(const char *err)
{
	size_t n = strlen(err);
	return n > 13 && strncmp(err, "meridianctl: ", 13) == 0 &&
	       err[n - 1] == '\n' && strchr(err, '\n') == err + n - 1;
}

static void submit(const char *file, char *id, size_t n)
{
	struct run r;

	id[0] = 0;
	RUN(&r, BFX_ACME, "submit", file);
	T_EQ_INT(r.rc, 0);
	r.out[strcspn(r.out, "\n")] = 0;
	snprintf(id, n, "%s", r.out);
	run_clear(&r);
}

/* ---- cases ------------------------------------------------------------- */

static void test_help_every_command(void)
{
	static const char *const cmds[][2] = {
	    {"submit", NULL},	 {"get", "jobs"},     {"get", "job"},
	    {"describe", "job"}, {"cancel", NULL},    {"dry-run", NULL},
	    {"get", "sites"},	 {"get", "site"},     {"site", "drain"},
	    {"site", "undrain"}, {"site", "revoke"},  {"token", "create"},
	    {"policy", "check"}, {"policy", "apply"}, {"get", "policy"}};
	struct run r;
	char want[64];

	SETUP();
	RUN(&r, NULL, "--help");
	T_EQ_INT(r.rc, 0);
	T_CONTAINS(r.out, "usage: meridianctl COMMAND");
	T_CONTAINS(r.out, "Exit codes:");
	T_CONTAINS(r.out, "7  broker unreachable");
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++)
		T_CONTAINS(r.out, cmds[i][0]);
	run_clear(&r);
	for (size_t i = 0; i < sizeof(cmds) / sizeof(cmds[0]); i++) {
		const char *a[] = {cmds[i][0],
				   cmds[i][1] ? cmds[i][1] : "--help",
				   cmds[i][1] ? "--help" : NULL, NULL};
		T_OK(run_as(&r, NULL, a));
		snprintf(want, sizeof(want), "usage: meridianctl %s%s%s",
			 cmds[i][0], cmds[i][1] ? " " : "",
			 cmds[i][1] ? cmds[i][1] : "");
		T_EQ_INT(r.rc, 0);
		T_CONTAINS(r.out, want);
		T_CONTAINS(r.out, "Exit codes:");
		T_EQ_STR(r.err, "");
		/* Help fits a terminal. */
		for (char *l = r.out; *l;) {
			size_t len = strcspn(l, "\n");
			if (len > 80)
				t_fail(__FILE__, __LINE__,
				       "long help line: %.*s", (int)len, l);
			l += len + (l[len] ? 1 : 0);
		}
		run_clear(&r);
	}
	RUN(&r, NULL, "help", "submit");
	T_EQ_INT(r.rc, 0);
	T_CONTAINS(r.out, "--wait");
	run_clear(&r);
}

static void test_usage_errors(void)
{
	struct run r;

	SETUP();
	RUN(&r, NULL, "frobnicate");
	T_EQ_INT(r.rc, 2);
	T_EXPECT(one_line_error(r.err));
	T_CONTAINS(r.err, "unknown command");
	run_clear(&r);
	RUN(&r, NULL, "get", "job");
	T_EQ_INT(r.rc, 2);
	T_CONTAINS(r.err, "missing ID");
	run_clear(&r);
	RUN(&r, NULL, "get", "jobs", "--no-such-flag");
	T_EQ_INT(r.rc, 2);
	T_EXPECT(one_line_error(r.err));
	run_clear(&r);
	RUN(&r, NULL, "get", "jobs", "--wait");
	T_EQ_INT(r.rc, 2);
	T_CONTAINS(r.err, "does not apply");
	run_clear(&r);
	RUN(&r, NULL, "get", "jobs", "-o", "yaml");
	T_EQ_INT(r.rc, 2);
	run_clear(&r);
	RUN(&r, BFX_ADMIN, "token", "create", "--region", "r1");
	T_EQ_INT(r.rc, 2);
	T_CONTAINS(r.err, "--site");
	run_clear(&r);
	RUN(&r, BFX_ADMIN, "token", "create", "--site", "x", "--region", "r",
	    "--ttl", "soon");
	T_EQ_INT(r.rc, 2);
	T_CONTAINS(r.err, "--ttl");
	run_clear(&r);
	RUN(&r, NULL, "get", "jobs", "--url", "ftp://127.0.0.1/");
	T_EQ_INT(r.rc, 2);
	T_EXPECT(one_line_error(r.err));
	run_clear(&r);
	const char *none[] = {NULL};
	T_OK(run_as(&r, NULL, none));
	T_EQ_INT(r.rc, 2);
	run_clear(&r);
}

static void test_policy_check(void)
{
	struct run r;
	char good[600];

	SETUP();
	snprintf(good, sizeof(good), "%s/policy/examples/cost-first.json",
		 bfx_top());
	/* Offline: no broker URL needed. */
	const char *a[] = {"policy", "check", good, NULL};
	T_OK(run_start(&r, "http://127.0.0.1:1", NULL, NULL, a));
	T_OK(run_finish(&r, 30000));
	T_EQ_INT(r.rc, 0);
	T_CONTAINS(r.out, "valid");
	run_clear(&r);
	RUN(&r, NULL, "policy", "check", good, "-o", "json");
	T_EQ_INT(r.rc, 0);
	T_ASSERT(r.json != NULL);
	T_EXPECT(json_is_true(json_object_get(r.json, "valid")));
	run_clear(&r);
	RUN(&r, NULL, "policy", "check", fixture("bad-policy.json"));
	T_EQ_INT(r.rc, 3);
	T_EXPECT(one_line_error(r.err));
	T_CONTAINS(r.err, "bad-policy.json:4:13: weights.wait");
	T_EQ_STR(r.out, "");
	run_clear(&r);
	RUN(&r, NULL, "policy", "check", "/nonexistent/policy.json");
	T_EQ_INT(r.rc, 3);
	T_EXPECT(one_line_error(r.err));
	run_clear(&r);
	/* From stdin. */
	const char *b[] = {"policy", "check", "-", NULL};
	T_OK(run_start(&r, F.base, NULL, fixture("bad-policy.json"), b));
	T_OK(run_finish(&r, 30000));
	T_EQ_INT(r.rc, 3);
	T_CONTAINS(r.err, "<stdin>:4:13:");
	run_clear(&r);
}

static void test_policy_apply(void)
{
	struct run r;
	char good[600];
	long long ver;

	SETUP();
	snprintf(good, sizeof(good), "%s/policy/examples/cost-first.json",
		 bfx_top());
	RUN(&r, BFX_ACME, "policy", "apply", good);
	T_EQ_INT(r.rc, 4);
	T_EXPECT(one_line_error(r.err));
	T_CONTAINS(r.err, "403");
	run_clear(&r);
	/* A bad file is refused before anything is sent. */
	RUN(&r, BFX_ADMIN, "policy", "apply", fixture("bad-policy.json"));
	T_EQ_INT(r.rc, 3);
	T_CONTAINS(r.err, "bad-policy.json:4:13");
	run_clear(&r);
	RUN(&r, BFX_ADMIN, "policy", "apply", good, "-o", "json");
	T_EQ_INT(r.rc, 0);
	T_ASSERT(r.json != NULL);
	ver = json_integer_value(json_object_get(r.json, "version"));
	T_EXPECT(ver >= 1);
	run_clear(&r);
	RUN(&r, BFX_ADMIN, "policy", "apply", good);
	T_EQ_INT(r.rc, 0);
	T_CONTAINS(r.out, "in force as version");
	run_clear(&r);
	RUN(&r, BFX_ACME, "get", "policy", "-o", "json");
	T_EQ_INT(r.rc, 0);
	T_ASSERT(r.json != NULL);
	T_EQ_INT(json_integer_value(json_object_get(r.json, "version")),
		 ver + 1);
	T_EQ_STR(json_string_value(json_object_get(r.json, "name")),
		 "cost-first-1");
	run_clear(&r);
	RUN(&r, BFX_ACME, "get", "policy");
	T_EQ_INT(r.rc, 0);
	T_CONTAINS(r.out, "Policy \"cost-first-1\"");
	run_clear(&r);
	RUN(&r, BFX_ACME, "get", "policy", "--version", "999999");
	T_EQ_INT(r.rc, 5);
	run_clear(&r);
}

static void test_submit_get_describe(void)
{
	struct run r;
	char id[128];

	SETUP();
	submit(fixture("pipeline.json"), id, sizeof(id));
	T_ASSERT(id[0] != 0);
	T_EXPECT(strchr(id, ' ') == NULL);

	RUN(&r, BFX_ACME, "get", "job", id);
	T_EQ_INT(r.rc, 0);
	T_CONTAINS(r.out, id);
	T_CONTAINS(r.out, "STAGE");
	T_CONTAINS(r.out, "prep");
	T_CONTAINS(r.out, "serve");
	T_CONTAINS(r.out, "Tenant:    acme");
	run_clear(&r);

	RUN(&r, BFX_ACME, "get", "job", id, "-o", "json");
	T_EQ_INT(r.rc, 0);
	T_ASSERT(r.json != NULL);
	T_EQ_STR(json_string_value(json_object_get(r.json, "id")), id);
	T_EQ_INT(json_array_size(json_object_get(r.json, "stages")), 3);
	run_clear(&r);

	RUN(&r, BFX_ACME, "get", "jobs");
	T_EQ_INT(r.rc, 0);
	T_CONTAINS(r.out, "ID");
	T_CONTAINS(r.out, id);
	T_CONTAINS(r.out, "cli-pipe");
	run_clear(&r);
	RUN(&r, BFX_ACME, "get", "jobs", "-o", "json", "--name", "cli-pipe");
	T_EQ_INT(r.rc, 0);
	T_ASSERT(json_is_array(json_object_get(r.json, "jobs")));
	int found = 0;
	json_t *j;
	size_t i;
	json_array_foreach (json_object_get(r.json, "jobs"), i, j) {
		found |=
		    !strcmp(json_string_value(json_object_get(j, "id")), id);
		T_EQ_STR(json_string_value(json_object_get(j, "name")),
			 "cli-pipe");
	}
	T_EXPECT(found);
	run_clear(&r);
	/* Other tenants do not see it; the admin does. */
	RUN(&r, BFX_BETA, "get", "job", id);
	T_EQ_INT(r.rc, 5);
	T_EXPECT(one_line_error(r.err));
	run_clear(&r);

	/* Placement comes from the broker's placement loop (200 ms). */
	long long end = t_now_ms() + 15000;
	int placed = 0;
	while (!placed && t_now_ms() < end) {
		RUN(&r, BFX_ADMIN, "describe", "job", id, "-o", "json");
		T_EQ_INT(r.rc, 0);
		placed = json_is_object(json_object_get(r.json, "placement"));
		run_clear(&r);
		if (!placed)
			t_sleep_ms(200);
	}
	T_ASSERT(placed);
	RUN(&r, BFX_ADMIN, "describe", "job", id);
	T_EQ_INT(r.rc, 0);
	T_CONTAINS(r.out, "Placement: complete");
	T_CONTAINS(r.out, "Stage train:");
	T_CONTAINS(r.out, "COMPUTE");
	T_CONTAINS(r.out, " *"); /* the chosen site */
	T_CONTAINS(r.out, "REJECTED BECAUSE");
	T_CONTAINS(r.out, "iad-down"); /* rejected: unhealthy */
	run_clear(&r);
	RUN(&r, BFX_ADMIN, "get", "job", "no-such-job");
	T_EQ_INT(r.rc, 5);
	run_clear(&r);
}

static void test_submit_stdin_and_bad_files(void)
{
	struct run r;

	SETUP();
	const char *a[] = {"submit", "-", "-o", "json", NULL};
	T_OK(run_start(&r, F.base, BFX_ACME, fixture("pipeline.json"), a));
	T_OK(run_finish(&r, 60000));
	T_EQ_INT(r.rc, 0);
	T_ASSERT(r.json != NULL);
	T_EQ_STR(json_string_value(json_object_get(r.json, "state")),
		 "pending");
	T_EXPECT(json_string_value(json_object_get(r.json, "id")) != NULL);
	run_clear(&r);

	RUN(&r, BFX_ACME, "submit", fixture("bad-job.json"));
	T_EQ_INT(r.rc, 3);
	T_EXPECT(one_line_error(r.err));
	T_CONTAINS(r.err,
		   "bad-job.json:6:37: stages[0].resources.gpu.count: must be");
	T_EQ_STR(r.out, "");
	run_clear(&r);
	RUN(&r, BFX_ACME, "submit", fixture("bad-job-syntax.json"));
	T_EQ_INT(r.rc, 3);
	T_EXPECT(one_line_error(r.err));
	T_CONTAINS(r.err, "bad-job-syntax.json:4:");
	run_clear(&r);
	RUN(&r, BFX_ACME, "submit", "/nonexistent/job.json");
	T_EQ_INT(r.rc, 3);
	run_clear(&r);
	/* The broker's own refusals map to the same code: a job no site of
	 * the federation could ever hold. */
	char path[600];
	snprintf(path, sizeof(path), "%s/huge.json", F.dir);
	bfx_write(path, "{\"name\": \"huge\", \"stages\": [{\"name\": \"t\", "
			"\"kind\": \"training\", \"resources\": {\"gpu\": "
			"{\"count\": 100000, \"model\": \"a800\"}}}]}");
	RUN(&r, BFX_ACME, "submit", path);
	T_EQ_INT(r.rc, 3);
	T_EXPECT(one_line_error(r.err));
	T_CONTAINS(r.err, "400");
	run_clear(&r);
	unlink(path);
}

static void test_idempotency_key(void)
{
	struct run r;
	char id1[128] = "";

	SETUP();
	RUN(&r, BFX_ACME, "submit", fixture("pipeline.json"),
	    "--idempotency-key", "cli-test-key-1");
	T_EQ_INT(r.rc, 0);
	snprintf(id1, sizeof(id1), "%.*s", (int)strcspn(r.out, "\n"), r.out);
	run_clear(&r);
	RUN(&r, BFX_ACME, "submit", fixture("pipeline.json"),
	    "--idempotency-key", "cli-test-key-1");
	T_EQ_INT(r.rc, 0);
	T_EXPECT(strncmp(r.out, id1, strlen(id1)) == 0 && id1[0]);
	run_clear(&r);
	/* Same key, another body: 422, an input error. */
	RUN(&r, BFX_ACME, "submit", fixture("bad-job.json"),
	    "--idempotency-key", "cli-test-key-1");
	T_EQ_INT(r.rc, 3); /* refused offline already */
	run_clear(&r);
	char path[600];
	snprintf(path, sizeof(path), "%s/other.json", F.dir);
	bfx_write(path, "{\"name\": \"other\", \"stages\": [{\"name\": \"s\", "
			"\"resources\": {\"cpu\": 1}}]}");
	RUN(&r, BFX_ACME, "submit", path, "--idempotency-key",
	    "cli-test-key-1");
	T_EQ_INT(r.rc, 3);
	T_CONTAINS(r.err, "422");
	run_clear(&r);
	unlink(path);
}

static void test_cancel(void)
{
	struct run r;
	char id[128];

	SETUP();
	submit(fixture("pipeline.json"), id, sizeof(id));
	T_ASSERT(id[0]);
	RUN(&r, BFX_ACME, "cancel", id);
	T_EQ_INT(r.rc, 0);
	T_CONTAINS(r.out, id);
	run_clear(&r);
	RUN(&r, BFX_ACME, "get", "job", id, "-o", "json");
	T_EQ_INT(r.rc, 0);
	const char *st = json_string_value(json_object_get(r.json, "state"));
	T_EXPECT(st &&
		 (!strcmp(st, "cancelled") ||
		  json_is_true(json_object_get(r.json, "cancel_requested"))));
	run_clear(&r);
	RUN(&r, BFX_BETA, "cancel", id);
	T_EQ_INT(r.rc, 5);
	run_clear(&r);
	RUN(&r, BFX_ACME, "cancel", "no-such-job", "-o", "json");
	T_EQ_INT(r.rc, 5);
	T_EXPECT(one_line_error(r.err));
	T_EQ_STR(r.out, "");
	run_clear(&r);
}

static void test_wait(void)
{
	struct run r;

	SETUP();
	/* No agents run here, so the job cannot finish: --wait follows it
	 * (a line per stage) until --wait-timeout, then exits 8. */
	RUN(&r, BFX_ACME, "submit", fixture("pipeline.json"), "--wait",
	    "--interval", "100ms", "--wait-timeout", "1500ms");
	T_EQ_INT(r.rc, 8);
	T_CONTAINS(r.out, "prep");
	T_CONTAINS(r.out, "train");
	T_CONTAINS(r.out, "serve");
	T_CONTAINS(r.err, "--wait-timeout");
	T_EXPECT(one_line_error(r.err));
	run_clear(&r);

	/* Cancelled while followed: exit 8, the state named. */
	const char *a[] = {"submit", fixture("pipeline.json"),
			   "--wait", "--interval",
			   "100ms",  NULL};
	T_OK(run_start(&r, F.base, BFX_ACME, NULL, a));
	char id[128] = "";
	long long end = t_now_ms() + 15000;
	while (!id[0] && t_now_ms() < end) {
		char *o = NULL;
		if (t_read_file(r.outp, &o, NULL) == 0 && strchr(o, '\n'))
			snprintf(id, sizeof(id), "%.*s", (int)strcspn(o, "\n"),
				 o);
		free(o);
		t_sleep_ms(50);
	}
	struct run c;
	if (id[0]) {
		RUN(&c, BFX_ACME, "cancel", id);
		T_EQ_INT(c.rc, 0);
		run_clear(&c);
	}
	T_OK(run_finish(&r, 30000));
	T_ASSERT(id[0]);
	T_EQ_INT(r.rc, 8);
	T_CONTAINS(r.err, "cancelled");
	T_EXPECT(one_line_error(r.err));
	T_CONTAINS(r.out, "cancelled");
	run_clear(&r);
}

static void test_dry_run(void)
{
	struct run r;

	SETUP();
	RUN(&r, BFX_ACME, "dry-run", fixture("pipeline.json"));
	T_EQ_INT(r.rc, 0);
	T_CONTAINS(r.out, "(dry run)");
	T_CONTAINS(r.out, "Stage prep:");
	T_CONTAINS(r.out, "SCORE");
	run_clear(&r);
	RUN(&r, BFX_ACME, "dry-run", fixture("pipeline.json"), "-o", "json",
	    "--candidates", "2");
	T_EQ_INT(r.rc, 0);
	T_ASSERT(r.json != NULL);
	T_EXPECT(json_is_true(json_object_get(r.json, "dry_run")));
	T_EQ_INT(json_array_size(json_object_get(r.json, "stages")), 3);
	run_clear(&r);
	RUN(&r, BFX_ACME, "dry-run", fixture("bad-job.json"));
	T_EQ_INT(r.rc, 3);
	T_CONTAINS(r.err, "bad-job.json:6:37");
	run_clear(&r);
}

static void test_sites(void)
{
	struct run r;

	SETUP();
	RUN(&r, BFX_ACME, "get", "sites");
	T_EQ_INT(r.rc, 0);
	T_CONTAINS(r.out, "SITE");
	T_CONTAINS(r.out, "GPUS FREE/TOTAL");
	T_CONTAINS(r.out, "bj-a800");
	T_CONTAINS(r.out, "cn-north-1");
	T_CONTAINS(r.out, "a800 32/64");
	run_clear(&r);
	RUN(&r, BFX_ACME, "get", "sites", "-o", "json");
	T_EQ_INT(r.rc, 0);
	T_ASSERT(r.json != NULL);
	json_t *sites = json_object_get(r.json, "sites"), *s;
	size_t i;
	T_EXPECT(json_array_size(sites) >= 5);
	json_array_foreach (sites, i, s)
		T_EXPECT(json_string_value(json_object_get(s, "name")) != NULL);
	run_clear(&r);
	RUN(&r, BFX_ACME, "get", "site", "bj-a800");
	T_EQ_INT(r.rc, 0);
	T_CONTAINS(r.out, "gpu:a800");
	run_clear(&r);
	RUN(&r, BFX_ACME, "get", "site", "nowhere");
	T_EQ_INT(r.rc, 5);
	run_clear(&r);

	RUN(&r, BFX_ACME, "site", "drain", "ord-a100");
	T_EQ_INT(r.rc, 4);
	T_EXPECT(one_line_error(r.err));
	run_clear(&r);
	RUN(&r, BFX_ADMIN, "site", "drain", "ord-a100");
	T_EQ_INT(r.rc, 0);
	T_CONTAINS(r.out, "drained");
	run_clear(&r);
	RUN(&r, BFX_ADMIN, "get", "sites");
	T_CONTAINS(r.out, "drained");
	run_clear(&r);
	RUN(&r, BFX_ADMIN, "site", "undrain", "ord-a100", "-o", "json");
	T_EQ_INT(r.rc, 0);
	T_ASSERT(r.json != NULL);
	T_EXPECT(json_is_false(json_object_get(r.json, "drained")));
	run_clear(&r);
	RUN(&r, BFX_ADMIN, "site", "drain", "nowhere");
	T_EQ_INT(r.rc, 5);
	run_clear(&r);
	/* iad-down is unhealthy and nothing here relies on it. */
	RUN(&r, BFX_ADMIN, "site", "revoke", "iad-down");
	T_EQ_INT(r.rc, 0);
	T_CONTAINS(r.out, "revoked");
	run_clear(&r);
	RUN(&r, BFX_ADMIN, "get", "site", "iad-down", "-o", "json");
	T_EQ_INT(r.rc, 0);
	T_EXPECT(json_is_true(json_object_get(r.json, "revoked")));
	run_clear(&r);
}

static void test_token_create(void)
{
	struct run r;

	SETUP();
	RUN(&r, BFX_ADMIN, "token", "create", "--site", "new-site", "--region",
	    "eu-west-1", "--ttl", "30m");
	T_EQ_INT(r.rc, 0);
	T_CONTAINS(r.out, "meridian-agent join --broker tcp://127.0.0.1:7400 "
			  "--token ");
	T_CONTAINS(r.out, "--broker-key SHA256:");
	T_CONTAINS(r.out, "--config site.json");
	T_CONTAINS(r.out, "(in 30m00s)");
	run_clear(&r);
	RUN(&r, BFX_ADMIN, "token", "create", "--site", "new-site2", "--region",
	    "eu-west-1", "-o", "json", "--link", "tcp://broker.example:7401",
	    "--agent-config", "/etc/meridian/site.json");
	T_EQ_INT(r.rc, 0);
	T_ASSERT(r.json != NULL);
	const char *tok = json_string_value(json_object_get(r.json, "token"));
	const char *fp =
	    json_string_value(json_object_get(r.json, "broker_key"));
	const char *line =
	    json_string_value(json_object_get(r.json, "join_command"));
	T_ASSERT(tok && fp && line);
	char want[1024];
	snprintf(want, sizeof(want),
		 "meridian-agent join --broker tcp://broker.example:7401 "
		 "--token %s --broker-key %s --config /etc/meridian/site.json",
		 tok, fp);
	T_EQ_STR(line, want);
	T_EXPECT(strchr(tok, '.') != NULL);
	run_clear(&r);
	RUN(&r, BFX_ACME, "token", "create", "--site", "x", "--region", "r");
	T_EQ_INT(r.rc, 4);
	T_EXPECT(one_line_error(r.err));
	run_clear(&r);
	RUN(&r, BFX_ADMIN, "token", "create", "--site", "Bad_Name!", "--region",
	    "r");
	T_EQ_INT(r.rc, 3);
	run_clear(&r);
}

static void test_auth_errors_hide_token(void)
{
	struct run r;
	const char *wrong = "wrong-token-SECRETSECRET-0123456789";

	SETUP();
	RUN(&r, NULL, "get", "jobs");
	T_EQ_INT(r.rc, 4);
	T_EXPECT(one_line_error(r.err));
	T_CONTAINS(r.err, "MERIDIAN_TOKEN");
	run_clear(&r);
	RUN(&r, wrong, "get", "jobs");
	T_EQ_INT(r.rc, 4);
	T_EXPECT(one_line_error(r.err));
	T_EXPECT(strstr(r.err, "SECRETSECRET") == NULL);
	T_EXPECT(strstr(r.out, "SECRETSECRET") == NULL);
	run_clear(&r);
	/* --token-file, with a trailing newline as editors leave it. */
	char path[600];
	snprintf(path, sizeof(path), "%s/token", F.dir);
	bfx_write(path, BFX_ACME "\n");
	RUN(&r, NULL, "get", "jobs", "--token-file", path);
	T_EQ_INT(r.rc, 0);
	run_clear(&r);
	RUN(&r, NULL, "get", "jobs", "--token-file", "/nonexistent/token");
	T_EQ_INT(r.rc, 4);
	run_clear(&r);
	/* The flag wins over the environment. */
	RUN(&r, wrong, "get", "jobs", "--token", BFX_ACME);
	T_EQ_INT(r.rc, 0);
	T_EXPECT(strstr(r.out, BFX_ACME) == NULL);
	run_clear(&r);
	unlink(path);
}

static void test_unreachable(void)
{
	struct run r;
	int port;
	char url[64];

	SETUP();
	T_OK(t_free_port(&port));
	snprintf(url, sizeof(url), "http://127.0.0.1:%d", port);
	const char *a[] = {"get", "jobs", NULL};
	T_OK(run_start(&r, url, BFX_ACME, NULL, a));
	T_OK(run_finish(&r, 30000));
	T_EQ_INT(r.rc, 7);
	T_EXPECT(one_line_error(r.err));
	run_clear(&r);
	/* https to a plain-HTTP port: the TLS handshake fails. */
	snprintf(url, sizeof(url), "https://127.0.0.1:%d", F.port);
	T_OK(run_start(&r, url, BFX_ACME, NULL, a));
	T_OK(run_finish(&r, 30000));
	T_EQ_INT(r.rc, 7);
	T_EXPECT(one_line_error(r.err));
	run_clear(&r);
	RUN(&r, BFX_ACME, "get", "jobs", "--ca-file", "/nonexistent/ca.pem");
	T_EQ_INT(r.rc, 2);
	run_clear(&r);
}

/* A server that answers every connection with one canned response. */
struct canned {
	int fd, port;
	const char *resp;
	pthread_t th;
	volatile int stop;
};

static void *canned_loop(void *arg)
{
	struct canned *c = arg;
	char buf[8192];

	while (!c->stop) {
		int s = accept(c->fd, NULL, NULL);
		if (s < 0)
			break;
		/* Read the request head (and a small body) first. */
		ssize_t n = recv(s, buf, sizeof(buf), 0);
		(void)n;
		ssize_t w = send(s, c->resp, strlen(c->resp), MSG_NOSIGNAL);
		(void)w;
		close(s);
	}
	return NULL;
}

static int canned_start(struct canned *c, const char *resp)
{
	struct sockaddr_in a = {0};
	socklen_t al = sizeof(a);

	memset(c, 0, sizeof(*c));
	c->resp = resp;
	c->fd = socket(AF_INET, SOCK_STREAM, 0);
	a.sin_family = AF_INET;
	a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
	if (c->fd < 0 || bind(c->fd, (struct sockaddr *)&a, sizeof(a)) ||
	    listen(c->fd, 8) || getsockname(c->fd, (struct sockaddr *)&a, &al))
		return MER_EIO;
	c->port = ntohs(a.sin_port);
	return pthread_create(&c->th, NULL, canned_loop, c) ? MER_EIO : 0;
}

static void canned_stop(struct canned *c)
{
	c->stop = 1;
	shutdown(c->fd, SHUT_RDWR);
	close(c->fd);
	pthread_join(c->th, NULL);
}

static void test_server_errors(void)
{
	static const char *const resps[] = {
	    "HTTP/1.1 503 Service Unavailable\r\nContent-Type: "
	    "application/json\r\nConnection: "
	    "close\r\n\r\n{\"error\":\"unavailable\",\"message\":\"etcd is "
	    "away\"}\n",
	    "HTTP/1.1 200 OK\r\nContent-Type: text/html\r\nConnection: "
	    "close\r\n\r\n<html>hi</html>",
	};
	struct canned c;
	struct run r;
	char url[64];

	SETUP();
	for (size_t i = 0; i < 2; i++) {
		T_OK(canned_start(&c, resps[i]));
		snprintf(url, sizeof(url), "http://127.0.0.1:%d", c.port);
		const char *a[] = {"get", "job", "j1", NULL};
		T_OK(run_start(&r, url, BFX_ACME, NULL, a));
		run_finish(&r, 30000);
		canned_stop(&c);
		T_EQ_INT(r.rc, 6);
		T_EXPECT(one_line_error(r.err));
		if (i == 0)
			T_CONTAINS(r.err, "etcd is away (503 unavailable)");
		run_clear(&r);
	}
}

static const struct t_case cases[] = {
    {"help_every_command", test_help_every_command},
    {"usage_errors", test_usage_errors},
    {"policy_check", test_policy_check},
    {"policy_apply", test_policy_apply},
    {"submit_get_describe", test_submit_get_describe},
    {"submit_stdin_and_bad_files", test_submit_stdin_and_bad_files},
    {"idempotency_key", test_idempotency_key},
    {"cancel", test_cancel},
    {"wait", test_wait},
    {"dry_run", test_dry_run},
    {"sites", test_sites},
    {"token_create", test_token_create},
    {"auth_errors_hide_token", test_auth_errors_hide_token},
    {"unreachable", test_unreachable},
    {"server_errors", test_server_errors},
};

T_MAIN("cli", cases)
