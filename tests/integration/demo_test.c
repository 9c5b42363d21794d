/*
 * The local federation script as a user or CI runs it: deploy/demo.sh --ci
 * in a fresh dir (real etcd, broker, three sim sites joined with tokens, the
 * example job followed to its end), then deploy/demo.sh --stop. Checks the
 * job, where its stages went, that secrets stay in 0600 files and out of
 * every log, that a second start refuses, and that nothing outlives --stop.
 * Not the Slurm site (tests/integration/e2e_test.c covers Slurm).
 */
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "common/err.h"
#include "tests/harness.h"
#include "tests/lib/proc.h"

#define MAX_PIDS 16

static struct {
	char top[512];
	char bin[1100];
	char dir[256];	 /* the demo's --dir */
	char out[512];	 /* demo.sh's output of the first run */
	char url[128];	 /* MERIDIAN_URL from DIR/env */
	char job[64];	 /* the demo job's id */
	int up;		 /* the first run exited 0 */
	int watchdog_fd; /* write end: 'x' then close = all cleaned */
	pid_t pids[MAX_PIDS];
	int npids;
} g = {.watchdog_fd = -1};

/* An absolute path for p in out (p itself when it does not exist). */
static void absolute(const char *p, char *out, size_t n)
{
	char *r = realpath(p, NULL);
	snprintf(out, n, "%s", r ? r : p);
	free(r);
}

static void paths(void)
{
	const char *t = getenv("MERIDIAN_TOP"), *b = getenv("MERIDIAN_BIN");
	char tmp[1100];

	absolute(t && *t ? t : ".", g.top, sizeof(g.top));
	if (b && *b)
		absolute(b, g.bin, sizeof(g.bin));
	else {
		snprintf(tmp, sizeof(tmp), "%s/bin", g.top);
		absolute(tmp, g.bin, sizeof(g.bin));
	}
}

/*
 * The demo's daemons run in sessions of their own (so that a terminal's
 * Ctrl-C reaches only the script), which puts them out of reach of
 * tests/lib/proc's registry. A watchdog in its own session waits for this
 * program to end and, unless told everything was cleaned, runs --stop and
 * removes the dir, even when the test is killed.
 */
static void start_watchdog(void)
{
	int fd[2];
	pid_t pid;

	if (pipe(fd) != 0)
		return;
	pid = fork();
	if (pid < 0) {
		close(fd[0]);
		close(fd[1]);
		return;
	}
	if (pid == 0) {
		char c = 0, script[1200];
		setsid();
		close(fd[1]);
		for (int i = 0; i < 1024; i++)
			if (i != fd[0])
				close(i);
		open("/dev/null", O_RDWR);
		dup2(0, 1);
		dup2(0, 2);
		ssize_t n;
		while ((n = read(fd[0], &c, 1)) < 0 && errno == EINTR)
			;
		if (n == 1 && c == 'x')
			_exit(0);
		struct stat st;
		if (stat(g.dir, &st) == 0) {
			snprintf(script, sizeof(script), "%s/deploy/demo.sh",
				 g.top);
			pid_t p = fork();
			if (p == 0) {
				execl("/bin/bash", "bash", script, "--stop",
				      "--dir", g.dir, (char *)NULL);
				_exit(127);
			}
			if (p > 0)
				waitpid(p, NULL, 0);
			p = fork();
			if (p == 0) {
				execl("/bin/rm", "rm", "-rf", "--", g.dir,
				      (char *)NULL);
				_exit(127);
			}
			if (p > 0)
				waitpid(p, NULL, 0);
		}
		_exit(0);
	}
	close(fd[0]);
	g.watchdog_fd = fd[1];
}

static void watchdog_done(void)
{
	if (g.watchdog_fd >= 0) {
		ssize_t n = write(g.watchdog_fd, "x", 1);
		(void)n;
		close(g.watchdog_fd);
		g.watchdog_fd = -1;
	}
}

/* Runs deploy/demo.sh with args; output to log. *status: exit status, or
 * -1 when it had to be killed after limit_ms. */
static int run_demo(char *const args[], const char *log, int limit_ms,
		    int *status)
{
	char script[1200], env_bin[1200];
	char *argv[16];
	char *env[] = {env_bin, NULL};
	struct t_proc *p;
	int n = 0, st = 0, rv;

	snprintf(script, sizeof(script), "%s/deploy/demo.sh", g.top);
	snprintf(env_bin, sizeof(env_bin), "MERIDIAN_BIN=%s", g.bin);
	argv[n++] = "bash";
	argv[n++] = script;
	for (int i = 0; args[i] && n < 15; i++)
		argv[n++] = args[i];
	argv[n] = NULL;
	if ((rv = t_proc_spawn("/bin/bash", argv, env, log, &p)))
		return rv;
	long long end = t_now_ms() + limit_ms;
	while (!t_proc_exited(p, &st) && t_now_ms() < end)
		t_sleep_ms(200);
	if (t_proc_stop(p, 15000, &st) != 0 || !WIFEXITED(st)) {
		*status = -1;
		return 0;
	}
	*status = WEXITSTATUS(st);
	return 0;
}

static char *slurp(const char *path)
{
	char *s = NULL;
	if (t_read_file(path, &s, NULL) != 0)
		return NULL;
	return s;
}

static void print_file(const char *path)
{
	char *s = slurp(path);
	printf("--- %s ---\n%s\n", path, s ? s : "(unreadable)");
	free(s);
}

static void dump_demo_logs(void)
{
	char path[600];
	const char *names[] = {"broker",
			       "etcd",
			       "ctl",
			       "agent-sim-shanghai",
			       "agent-sim-frankfurt",
			       "agent-sim-virginia"};

	print_file(g.out);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		snprintf(path, sizeof(path), "%s/logs/%s.log", g.dir, names[i]);
		char *s = slurp(path);
		if (s) {
			size_t l = strlen(s);
			printf("--- %s (tail) ---\n%s\n", path,
			       l > 3000 ? s + l - 3000 : s);
		}
		free(s);
	}
}

/* A process whose command line contains needle and is not a zombie. */
static int count_procs_with(const char *needle)
{
	DIR *d = opendir("/proc");
	struct dirent *e;
	int n = 0;

	if (!d)
		return -1;
	while ((e = readdir(d))) {
		char path[300], buf[4096];
		if (e->d_name[0] < '0' || e->d_name[0] > '9')
			continue;
		if (strtol(e->d_name, NULL, 10) == getpid())
			continue;
		snprintf(path, sizeof(path), "/proc/%s/cmdline", e->d_name);
		FILE *f = fopen(path, "r");
		if (!f)
			continue;
		size_t len = fread(buf, 1, sizeof(buf) - 1, f);
		fclose(f);
		for (size_t i = 0; i < len; i++)
			if (buf[i] == 0)
				buf[i] = ' ';
		buf[len] = 0;
		if (strstr(buf, needle)) {
			printf("    still running: pid %s: %s\n", e->d_name,
			       buf);
			n++;
		}
	}
	closedir(d);
	return n;
}

static int pid_alive(pid_t pid)
{
	char path[64], buf[512];
	snprintf(path, sizeof(path), "/proc/%d/stat", (int)pid);
	FILE *f = fopen(path, "r");
	if (!f)
		return 0;
	size_t n = fread(buf, 1, sizeof(buf) - 1, f);
	fclose(f);
	buf[n] = 0;
	char *p = strrchr(buf, ')');
	return p && p[1] == ' ' && p[2] != 'Z' && p[2] != 'X';
}

static void read_pids(void)
{
	char path[600];
	DIR *d;
	struct dirent *e;

	g.npids = 0;
	snprintf(path, sizeof(path), "%s/pids", g.dir);
	if (!(d = opendir(path)))
		return;
	while ((e = readdir(d)) && g.npids < MAX_PIDS) {
		char f[900], *s;
		if (!strstr(e->d_name, ".pid"))
			continue;
		snprintf(f, sizeof(f), "%s/%s", path, e->d_name);
		if ((s = slurp(f))) {
			g.pids[g.npids++] = (pid_t)strtol(s, NULL, 10);
			free(s);
		}
	}
	closedir(d);
}

/* MERIDIAN_URL=... from DIR/env. */
static void read_url(void)
{
	char path[600], *s, *p;

	snprintf(path, sizeof(path), "%s/env", g.dir);
	if (!(s = slurp(path)))
		return;
	if ((p = strstr(s, "MERIDIAN_URL="))) {
		p += strlen("MERIDIAN_URL=");
		size_t n = strcspn(p, "\n");
		snprintf(g.url, sizeof(g.url), "%.*s", (int)n, p);
	}
	free(s);
}

static void test_up(void)
{
	char path[1200];
	int st = -2;

	paths();
	snprintf(g.dir, sizeof(g.dir), "/tmp/meridian-demo-test.XXXXXX");
	T_ASSERT(mkdtemp(g.dir) != NULL);
	start_watchdog();
	snprintf(path, sizeof(path), "%s/meridianctl", g.bin);
	if (access(path, X_OK) != 0) {
		t_fail(__FILE__, __LINE__,
		       "%s is missing (build first, or set MERIDIAN_BIN)",
		       path);
		return;
	}
	/* The demo's output goes beside, not inside, its dir: the script
	 * owns what is in there. */
	snprintf(g.out, sizeof(g.out), "%s.out", g.dir);
	char *args[] = {"--ci",	     "--no-slurm", "--dir", g.dir,
			"--timeout", "120",	   NULL};
	long long t0 = t_now_ms();
	T_OK(run_demo(args, g.out, 240000, &st));
	printf("    demo.sh --ci took %lld ms\n", t_now_ms() - t0);
	if (st != 0)
		dump_demo_logs();
	T_EQ_INT(st, 0);
	char *out = slurp(g.out);
	T_ASSERT(out != NULL);
	/* What a newcomer is shown, in order. */
	T_CONTAINS(out, "==> Starting etcd");
	T_CONTAINS(out, "==> Starting the broker");
	T_CONTAINS(out, "site admin runs: meridian-agent join --broker tcp://"
			"127.0.0.1:");
	T_CONTAINS(out, "SITE");
	T_CONTAINS(out, "Placement:");
	T_CONTAINS(out, "make demo-stop");
	const char *j = strstr(out, "\njob j");
	T_EXPECT(j != NULL);
	if (j) {
		const char *id = j + 5;
		size_t n = strcspn(id, " \n");
		snprintf(g.job, sizeof(g.job), "%.*s", (int)n, id);
		T_EXPECT(strncmp(id + n, " succeeded after", 16) == 0);
	}
	free(out);
	read_pids();
	read_url();
	/* etcd, the broker and three agents, all alive. */
	T_EQ_INT(g.npids, 5);
	for (int i = 0; i < g.npids; i++)
		T_EXPECT(pid_alive(g.pids[i]));
	g.up = st == 0 && g.url[0] && g.job[0];
}

/* The job as the broker has it: three stages, each succeeded where the
 * engine's reasons say it must go. */
static void test_job_placed_and_succeeded(void)
{
	char cmd[3000];
	json_t *job = NULL;

	if (!g.up) {
		t_skip("the demo did not come up");
		return;
	}
	snprintf(cmd, sizeof(cmd),
		 "'%s/meridianctl' --url '%s' --token-file "
		 "'%s/secrets/admin.token' -o json get job %s",
		 g.bin, g.url, g.dir, g.job);
	FILE *f = popen(cmd, "r");
	T_ASSERT(f != NULL);
	json_error_t je;
	job = json_loadf(f, 0, &je);
	T_EQ_INT(pclose(f), 0);
	T_ASSERT(job != NULL);
	T_EQ_STR(json_string_value(json_object_get(job, "state")), "succeeded");
	json_t *stages = json_object_get(job, "stages");
	T_EQ_INT(json_array_size(stages), 3);
	const char *want[] = {"prep", "train", "score"};
	for (size_t i = 0; i < json_array_size(stages) && i < 3; i++) {
		json_t *s = json_array_get(stages, i);
		const char *site =
		    json_string_value(json_object_get(s, "site"));
		T_EQ_STR(json_string_value(json_object_get(s, "name")),
			 want[i]);
		T_EQ_STR(json_string_value(json_object_get(s, "state")),
			 "succeeded");
		T_EQ_INT(json_integer_value(json_object_get(s, "exit_code")),
			 0);
		T_ASSERT(site != NULL);
		/* prep reads web-corpus, which only sim-shanghai holds (500
		 * GB); train needs ib, which sim-virginia lacks; score is near
		 * us-east-1. */
		if (i == 0)
			T_EQ_STR(site, "sim-shanghai");
		if (i == 1)
			T_EXPECT(strcmp(site, "sim-virginia") != 0);
		if (i == 2)
			T_EQ_STR(site, "sim-virginia");
	}
	json_decref(job);
}

/*
 * The README's tour, run as written against the demo that is up: every line
 * of the ```sh block under "## A tour", with only the demo dir and the job
 * id filled in, must exit 0. This is what keeps the README from drifting.
 */
static void test_readme_tour(void)
{
	char path[700], script[700], log[700], cmd[2200];
	char *readme = NULL;
	FILE *f;

	if (!g.up) {
		t_skip("the demo did not come up");
		return;
	}
	snprintf(path, sizeof(path), "%s/README.md", g.top);
	readme = slurp(path);
	T_ASSERT(readme != NULL);
	char *tour = strstr(readme, "\n## A tour");
	char *block = tour ? strstr(tour, "\n```sh\n") : NULL;
	char *end = block ? strstr(block + 7, "\n```") : NULL;
	T_ASSERT(block != NULL && end != NULL);
	block += 7;
	*end = '\0';

	snprintf(script, sizeof(script), "%s/tour.sh", g.dir);
	snprintf(log, sizeof(log), "%s/tour.log", g.dir);
	f = fopen(script, "w");
	T_ASSERT(f != NULL);
	/* No set -x: it would print the token the env file exports. */
	fprintf(f, "set -e\ncd '%s'\n", g.top);
	int lines = 0;
	for (char *line = strtok(block, "\n"); line;
	     line = strtok(NULL, "\n")) {
		fprintf(f, "echo '>>> README tour line %d'\n", lines + 1);
		if (strncmp(line, ". .demo/env", 11) == 0) {
			fprintf(f, ". '%s/env'%s\n", g.dir, line + 11);
		} else {
			/* the placeholder ID, as a whole word */
			char *id = strstr(line, " ID");
			if (id && (id[3] == ' ' || id[3] == '\0'))
				fprintf(f, "%.*s %s%s\n", (int)(id - line), line,
					g.job, id + 3);
			else
				fprintf(f, "%s\n", line);
		}
		lines++;
	}
	fclose(f);
	free(readme);
	T_ASSERT(lines >= 5);
	snprintf(cmd, sizeof(cmd), "bash '%s' >'%s' 2>&1", script, log);
	int rc = system(cmd);
	if (rc != 0)
		print_file(log);
	T_EQ_INT(rc, 0);
}

static int file_has(const char *path, const char *needle)
{
	char *s = slurp(path);
	int has = s && needle[0] && strstr(s, needle) != NULL;
	free(s);
	return has;
}

/* Every file under dir (recursively, but not etcd's data) that holds
 * needle; counts them and names them. */
static int files_with(const char *dir, const char *needle)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	int n = 0;

	if (!d)
		return 0;
	while ((e = readdir(d))) {
		char path[1200];
		struct stat st;
		if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..") ||
		    !strcmp(e->d_name, "etcd") || !strcmp(e->d_name, "secrets"))
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (lstat(path, &st) != 0)
			continue;
		if (S_ISDIR(st.st_mode)) {
			n += files_with(path, needle);
		} else if (S_ISREG(st.st_mode) && file_has(path, needle)) {
			printf("    %s holds a secret\n", path);
			n++;
		}
	}
	closedir(d);
	return n;
}

static void test_secrets_stay_in_0600_files(void)
{
	const char *names[] = {"admin", "acme", "sim-shanghai", "sim-frankfurt",
			       "sim-virginia"};
	char path[700];
	struct stat st;

	if (!g.up) {
		t_skip("the demo did not come up");
		return;
	}
	snprintf(path, sizeof(path), "%s/secrets", g.dir);
	T_ASSERT(stat(path, &st) == 0);
	T_EQ_INT(st.st_mode & 0777, 0700);
	for (size_t i = 0; i < sizeof(names) / sizeof(names[0]); i++) {
		char *tok;
		snprintf(path, sizeof(path), "%s/secrets/%s.token", g.dir,
			 names[i]);
		T_ASSERT(stat(path, &st) == 0);
		T_EQ_INT(st.st_mode & 0777, 0600);
		T_ASSERT((tok = slurp(path)) != NULL);
		tok[strcspn(tok, "\n")] = 0;
		T_EXPECT(strlen(tok) >= 16);
		/* A join token's secret is what follows its id. */
		const char *secret =
		    strchr(tok, '.') ? strchr(tok, '.') + 1 : tok;
		T_EXPECT(!file_has(g.out, secret));
		T_EQ_INT(files_with(g.dir, secret), 0);
		free(tok);
	}
	/* The env file reads the token from its file, never holds it. */
	snprintf(path, sizeof(path), "%s/env", g.dir);
	T_ASSERT(stat(path, &st) == 0);
	T_EQ_INT(st.st_mode & 0777, 0600);
	T_EXPECT(file_has(path, "MERIDIAN_TOKEN=\"$(cat "));
	/* Site keys are 0600. */
	snprintf(path, sizeof(path), "%s/sites/sim-shanghai/site.key", g.dir);
	T_ASSERT(stat(path, &st) == 0);
	T_EQ_INT(st.st_mode & 0777, 0600);
}

static void test_second_start_says_running(void)
{
	char log[600];
	int st = -2;

	if (!g.up) {
		t_skip("the demo did not come up");
		return;
	}
	snprintf(log, sizeof(log), "%s.again", g.dir);
	char *args[] = {"--ci", "--no-slurm", "--dir", g.dir, NULL};
	T_OK(run_demo(args, log, 30000, &st));
	T_EQ_INT(st, 0);
	char *out = slurp(log);
	T_CONTAINS(out, "already runs");
	free(out);
	unlink(log);
	/* ...and left the running federation alone. */
	for (int i = 0; i < g.npids; i++)
		T_EXPECT(pid_alive(g.pids[i]));
}

static void test_stop_leaves_nothing(void)
{
	char log[600], path[600];
	int st = -2;

	if (!g.dir[0]) {
		t_skip("the demo was not started");
		return;
	}
	snprintf(log, sizeof(log), "%s.stop", g.dir);
	char *args[] = {"--stop", "--dir", g.dir, NULL};
	T_OK(run_demo(args, log, 90000, &st));
	T_EQ_INT(st, 0);
	char *out = slurp(log);
	if (g.up)
		T_CONTAINS(out, "is stopped");
	free(out);
	unlink(log);
	for (int i = 0; i < g.npids; i++)
		T_EXPECT(!pid_alive(g.pids[i]));
	T_EQ_INT(count_procs_with(g.dir), 0);
	/* Secrets go with the federation. */
	snprintf(path, sizeof(path), "%s/secrets", g.dir);
	T_EXPECT(access(path, F_OK) != 0);
	/* A second stop is harmless. */
	T_OK(run_demo(args, log, 30000, &st));
	T_EQ_INT(st, 0);
	unlink(log);
	if (!t_case_failed() || !getenv("MERIDIAN_KEEP_TMP")) {
		t_rmtree(g.dir);
		unlink(g.out);
		watchdog_done();
	}
}

static const struct t_case cases[] = {
    {"up", test_up},
    {"job_placed_and_succeeded", test_job_placed_and_succeeded},
    {"readme_tour", test_readme_tour},
    {"secrets_stay_in_0600_files", test_secrets_stay_in_0600_files},
    {"second_start_says_running", test_second_start_says_running},
    {"stop_leaves_nothing", test_stop_leaves_nothing},
};

T_MAIN("demo", cases)
