/*
 * End to end through real Slurm (issue 7): a real etcd, bin/meridian-broker,
 * an agent on the one-node Slurm of deploy/slurm-up.sh and two sim agents,
 * all joined with tokens from `meridianctl token create`; jobs go in with
 * `meridianctl submit --wait`. Skipped, with the reason, where Slurm cannot
 * run (not root, no packages). The broker's own API is tested elsewhere.
 */
#include "tests/integration/broker_fixture.h"

#include <errno.h>
#include <fcntl.h>
#include <sodium.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "tests/harness.h"

#define NSITES 3
enum { SIM_A, SIM_B, SLURM };

static struct bfx F;
static struct {
	int ready; /* everything up: the cases may run */
	char skip[600];
	char top[512];
	char bin[600];
	char admin_file[600];
	char acme_file[600];
	/* slurm */
	char state[128];
	char sock[512];
	char conf[512];
	char partition[64];
	char model[64];
	char job_dir[512];
	int slurm_up;
	int watchdog_fd;
	struct t_proc *agents[NSITES];
	char cfgs[NSITES][600];
} g = {.watchdog_fd = -1};

static const char *names[NSITES] = {"sim-a", "sim-b", "slurm-e2e"};
static const char *regions[NSITES] = {"eu-west-1", "us-east-1", "cn-north-1"};

static const char *nz(const char *s)
{
	return s ? s : "";
}

/* Runs a shell command line; its stdout in *out (malloc'd), its stderr
 * in *err when err is not NULL (else the test's stderr). Returns the exit
 * status, -1 when it could not run. */
static int sh(const char *cmd, char **out, char **err)
{
	char errf[700], line[4096];
	FILE *f;
	size_t len = 0;
	int st;

	snprintf(errf, sizeof(errf), "%s/sh.err", F.dir ? F.dir : "/tmp");
	snprintf(line, sizeof(line), "%s 2>'%s'", cmd, errf);
	if (!(f = popen(err ? line : cmd, "r")))
		return -1;
	char *buf = NULL;
	size_t cap = 0;
	for (;;) {
		if (len + 4096 + 1 > cap) {
			cap = cap ? 2 * cap : 8192;
			char *nb = realloc(buf, cap);
			if (!nb)
				break;
			buf = nb;
		}
		size_t n = fread(buf + len, 1, 4096, f);
		if (n == 0)
			break;
		len += n;
	}
	if (buf)
		buf[len] = 0;
	st = pclose(f);
	if (out)
		*out = buf;
	else
		free(buf);
	if (err && t_read_file(errf, err, NULL) != 0)
		*err = NULL;
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* NAME='value' from slurm-up.sh's output. */
static int env_value(const char *out, const char *name, char *v, size_t n)
{
	char key[80];
	snprintf(key, sizeof(key), "%s='", name);
	const char *p = strstr(out, key);
	if (!p)
		return MER_ENOTFOUND;
	p += strlen(key);
	size_t l = strcspn(p, "'");
	snprintf(v, n, "%.*s", (int)l, p);
	return 0;
}

/* slurm-down.sh --purge once this program is gone, unless told it was
 * done: the cluster's daemons are not children of the test. */
static void start_watchdog(void)
{
	int fd[2];
	pid_t pid;

	if (pipe(fd) != 0)
		return;
	if ((pid = fork()) < 0) {
		close(fd[0]);
		close(fd[1]);
		return;
	}
	if (pid == 0) {
		char c = 0, script[700];
		ssize_t n;
		setsid();
		close(fd[1]);
		for (int i = 0; i < 1024; i++)
			if (i != fd[0])
				close(i);
		while ((n = read(fd[0], &c, 1)) < 0 && errno == EINTR)
			;
		if (n == 1 && c == 'x')
			_exit(0);
		snprintf(script, sizeof(script), "%s/deploy/slurm-down.sh",
			 g.top);
		execl("/bin/bash", "bash", script, "--state", g.state,
		      "--purge", (char *)NULL);
		_exit(127);
	}
	close(fd[0]);
	g.watchdog_fd = fd[1];
}

static void slurm_down(void)
{
	char cmd[1200];

	if (!g.slurm_up)
		return;
	snprintf(cmd, sizeof(cmd),
		 "'%s/deploy/slurm-down.sh' --state '%s' --purge >/dev/null "
		 "2>&1",
		 g.top, g.state);
	if (sh(cmd, NULL, NULL) == 0 && g.watchdog_fd >= 0) {
		ssize_t n = write(g.watchdog_fd, "x", 1);
		(void)n;
	}
	if (g.watchdog_fd >= 0)
		close(g.watchdog_fd);
	g.watchdog_fd = -1;
	g.slurm_up = 0;
}

static void at_exit(void)
{
	for (int i = 0; i < NSITES; i++)
		t_proc_stop(g.agents[i], 5000, NULL);
	slurm_down();
}

/* 0 up; MER_EUNSUPPORTED (g.skip says why) when Slurm cannot run here. */
static int slurm_up(void)
{
	char cmd[1200], *out = NULL, *err = NULL;
	int st;

	snprintf(g.state, sizeof(g.state), "/tmp/meridian-e2e-slurm.XXXXXX");
	if (!mkdtemp(g.state))
		return MER_EIO;
	chmod(g.state, 0755);
	g.slurm_up = 1;
	start_watchdog();
	snprintf(cmd, sizeof(cmd),
		 "'%s/deploy/slurm-up.sh' --state '%s' --gpus 4 --gpu-model "
		 "a100",
		 g.top, g.state);
	st = sh(cmd, &out, &err);
	if (st == 3) {
		const char *e = nz(err);
		size_t l = strlen(e);
		snprintf(g.skip, sizeof(g.skip), "slurm cannot run here: %s",
			 l > 400 ? e + l - 400 : e);
		free(out);
		free(err);
		return MER_EUNSUPPORTED;
	}
	if (st != 0) {
		printf("%s\n", nz(err));
		free(out);
		free(err);
		return MER_EIO;
	}
	free(err);
	int rv = env_value(out, "SLURMRESTD_SOCKET", g.sock, sizeof(g.sock));
	if (!rv)
		rv = env_value(out, "SLURM_CONF", g.conf, sizeof(g.conf));
	if (!rv)
		rv = env_value(out, "SLURM_PARTITION", g.partition,
			       sizeof(g.partition));
	if (!rv)
		rv =
		    env_value(out, "SLURM_GPU_MODEL", g.model, sizeof(g.model));
	if (!rv)
		rv = env_value(out, "SLURM_JOB_DIR", g.job_dir,
			       sizeof(g.job_dir));
	free(out);
	return rv;
}

static int write_file(const char *path, const char *text, mode_t mode)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, mode);
	if (fd < 0)
		return MER_EIO;
	size_t n = strlen(text);
	int ok = write(fd, text, n) == (ssize_t)n;
	return close(fd) == 0 && ok ? 0 : MER_EIO;
}

/* A string member of meridianctl's -o json output. */
static int json_member(const char *text, const char *key, char *v, size_t n)
{
	json_t *j = json_loads(text ? text : "", 0, NULL);
	const char *s = json_string_value(json_object_get(j, key));
	int rv = s ? 0 : MER_ENOTFOUND;
	if (s)
		snprintf(v, n, "%s", s);
	json_decref(j);
	return rv;
}

static void site_config(int i, const char *fp, char *text, size_t n)
{
	char sim[700];
	snprintf(sim, sizeof(sim), "%s/tests/fixtures/broker/sim-site.json",
		 g.top);
	if (i == SLURM)
		snprintf(text, n,
			 "{\"site\": {\"name\": \"%s\", \"region\": \"%s\","
			 " \"labels\": {\"provider\": \"on-prem\"}},"
			 " \"scheduler\": {\"kind\": \"slurm\", \"url\": "
			 "\"unix://%s\", \"queue\": \"%s\", \"timeout\": "
			 "\"20s\"},"
			 " \"prices\": {\"gpu_hour\": {\"%s\": 0.5}, "
			 "\"core_hour\": 0.005, \"egress_gb\": 0.05},"
			 " \"datasets\": [{\"name\": \"lab-data\", \"bytes\": "
			 "0, \"path\": \"%s/lab-data\"}],"
			 " \"agent\": {\"state_file\": \"%s/%s.state\","
			 " \"key_file\": \"%s/%s.key\", \"broker\": \"%s\","
			 " \"broker_key\": \"%s\", \"report_interval\": "
			 "\"1s\", \"poll_interval\": \"300ms\"}}",
			 names[i], regions[i], g.sock, g.partition, g.model,
			 F.dir, F.dir, names[i], F.dir, names[i], F.link, fp);
	else
		snprintf(text, n,
			 "{\"site\": {\"name\": \"%s\", \"region\": \"%s\"},"
			 " \"scheduler\": {\"kind\": \"sim\", \"sim_file\": "
			 "\"%s\", \"time_scale\": 100},"
			 " \"prices\": {\"gpu_hour\": {\"a100\": %s}, "
			 "\"core_hour\": 0.01, \"egress_gb\": 0.05},"
			 " \"agent\": {\"state_file\": \"%s/%s.state\","
			 " \"key_file\": \"%s/%s.key\", \"broker\": \"%s\","
			 " \"broker_key\": \"%s\", \"report_interval\": "
			 "\"1s\", \"poll_interval\": \"200ms\"}}",
			 names[i], regions[i], sim, i == SIM_A ? "2.0" : "2.5",
			 F.dir, names[i], F.dir, names[i], F.link, fp);
}

/* The admin makes a token with the CLI; the "site admin" writes the site
 * config and runs the join line; then the agent runs. */
static int join_site(int i)
{
	char cmd[3000], token[160], fp[120], text[4096], log[700];
	char *out = NULL;
	int rv, st;

	snprintf(cmd, sizeof(cmd),
		 "'%s/meridianctl' --url %s --token-file '%s' -o json token "
		 "create --site %s --region %s --ttl 10m --link %s",
		 g.bin, F.base, g.admin_file, names[i], regions[i], F.link);
	st = sh(cmd, &out, NULL);
	if (st != 0) {
		free(out);
		printf("    token create exited %d\n", st);
		return MER_EREMOTE;
	}
	rv = json_member(out, "token", token, sizeof(token));
	if (!rv)
		rv = json_member(out, "broker_key", fp, sizeof(fp));
	free(out);
	if (rv)
		return rv;
	snprintf(g.cfgs[i], sizeof(g.cfgs[i]), "%s/%s.json", F.dir, names[i]);
	site_config(i, fp, text, sizeof(text));
	if ((rv = write_file(g.cfgs[i], text, 0600)))
		return rv;
	snprintf(cmd, sizeof(cmd), "%s/meridian-agent", g.bin);
	snprintf(log, sizeof(log), "%s/%s.log", F.dir, names[i]);
	char *jargv[] = {
	    cmd,   "join",	   "--broker", F.link,	   "--token",
	    token, "--broker-key", fp,	       "--config", g.cfgs[i],
	    NULL};
	struct t_proc *j;
	int status = 0;
	rv = t_proc_spawn(cmd, jargv, NULL, log, &j);
	sodium_memzero(token, sizeof(token));
	if (rv)
		return rv;
	for (int k = 0; k < 300 && !t_proc_exited(j, &status); k++)
		t_sleep_ms(50);
	t_proc_stop(j, 1000, &status);
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		return MER_EAUTH;
	char *argv[] = {cmd, "--config", g.cfgs[i], NULL};
	return t_proc_spawn(cmd, argv, NULL, log, &g.agents[i]);
}

static int site_reported(const char *name)
{
	struct bres r;
	char path[128];
	int ok;

	snprintf(path, sizeof(path), "/v1/sites/%s", name);
	if (bfx_req(&F, "GET", path, BFX_ADMIN, NULL, NULL, &r))
		return 0;
	ok = r.status == 200 &&
	     json_is_object(json_object_get(r.json, "summary"));
	bres_clear(&r);
	return ok;
}

static void dump_logs(void)
{
	char path[700], *log = NULL;
	const char *files[] = {"broker", "sim-a", "sim-b", "slurm-e2e"};

	for (size_t i = 0; i < sizeof(files) / sizeof(files[0]); i++) {
		snprintf(path, sizeof(path), "%s/%s.log", F.dir, files[i]);
		if (t_read_file(path, &log, NULL) == 0) {
			size_t l = strlen(log);
			fprintf(stdout, "--- %s (tail) ---\n%s\n", files[i],
				l > 4000 ? log + l - 4000 : log);
		}
		free(log);
		log = NULL;
	}
}

static void test_up(void)
{
	const char *top = getenv("MERIDIAN_TOP"), *bin = getenv("MERIDIAN_BIN");
	char *r;
	int rv;

	if (sodium_init() < 0)
		return;
	curl_global_init(CURL_GLOBAL_DEFAULT);
	atexit(at_exit);
	r = realpath(top && *top ? top : ".", NULL);
	snprintf(g.top, sizeof(g.top), "%s", r ? r : ".");
	free(r);
	if (bin && *bin)
		snprintf(g.bin, sizeof(g.bin), "%s", bin);
	else
		snprintf(g.bin, sizeof(g.bin), "%s/bin", g.top);
	rv = slurm_up();
	if (rv == MER_EUNSUPPORTED) {
		t_skip("%s", g.skip);
		return;
	}
	T_OK(rv);
	T_OK(bfx_start_opts(&F,
			    "\"placement\": {\"interval\": \"300ms\"},"
			    " \"sites\": {\"report_interval\": \"1s\","
			    " \"lost_after\": 3},",
			    1));
	/* Tokens for the CLI in 0600 files (arguments show in ps). */
	snprintf(g.admin_file, sizeof(g.admin_file), "%s/admin.token", F.dir);
	snprintf(g.acme_file, sizeof(g.acme_file), "%s/acme.token", F.dir);
	T_OK(write_file(g.admin_file, BFX_ADMIN "\n", 0600));
	T_OK(write_file(g.acme_file, BFX_ACME "\n", 0600));
	/* The dataset only the Slurm site holds. */
	char path[700];
	snprintf(path, sizeof(path), "%s/lab-data", F.dir);
	T_OK(write_file(path, "ACGT\n", 0644));
	for (int i = 0; i < NSITES; i++) {
		rv = join_site(i);
		if (rv)
			dump_logs();
		T_OK(rv);
	}
	long long end = t_now_ms() + 30000;
	int all = 0;
	while (t_now_ms() < end && !all) {
		all = 1;
		for (int i = 0; i < NSITES; i++)
			all &= site_reported(names[i]);
		if (!all)
			t_sleep_ms(200);
	}
	if (!all)
		dump_logs();
	T_ASSERT(all);
	g.ready = 1;
}

/* Writes a job file into F.dir; returns its path in out. */
static int job_file(const char *name, const char *text, char *out, size_t n)
{
	snprintf(out, n, "%s/%s.json", F.dir, name);
	return write_file(out, text, 0644);
}

/* meridianctl submit FILE --wait as tenant acme: exit status, job id. */
static int submit_wait(const char *file, int timeout_s, char *id, size_t n,
		       char **err)
{
	char cmd[3000], *out = NULL;
	int st;

	snprintf(cmd, sizeof(cmd),
		 "'%s/meridianctl' --url %s --token-file '%s' submit '%s' "
		 "--wait --interval 300ms --wait-timeout %ds",
		 g.bin, F.base, g.acme_file, file, timeout_s);
	st = sh(cmd, &out, err);
	printf("%s", nz(out));
	id[0] = 0;
	if (out)
		snprintf(id, n, "%.*s", (int)strcspn(out, "\n"), out);
	free(out);
	return st;
}

static json_t *get_job(const char *id)
{
	struct bres r;
	char path[128];
	json_t *j = NULL;

	snprintf(path, sizeof(path), "/v1/jobs/%s", id);
	if (bfx_req(&F, "GET", path, BFX_ADMIN, NULL, NULL, &r) == 0 &&
	    r.status == 200)
		j = json_incref(r.json);
	bres_clear(&r);
	return j;
}

static json_t *stage_of(json_t *job, const char *name)
{
	size_t i;
	json_t *s;
	json_array_foreach (json_object_get(job, "stages"), i, s)
		if (!strcmp(nz(json_string_value(json_object_get(s, "name"))),
			    name))
			return s;
	return NULL;
}

static const char *site_of(json_t *job, const char *stage)
{
	return json_string_value(json_object_get(stage_of(job, stage), "site"));
}

/* Slurm saw a job whose name has needle, finished with state. */
static int slurm_saw(const char *needle, const char *state)
{
	char cmd[1200], *out = NULL;
	int ok;

	snprintf(cmd, sizeof(cmd),
		 "SLURM_CONF='%s' sacct --completion -n -P -o "
		 "jobid,jobname,state,exitcode",
		 g.conf);
	/* jobcomp is written as the job completes: allow a moment. */
	for (int k = 0; k < 25; k++) {
		sh(cmd, &out, NULL);
		char *p = out ? strstr(out, needle) : NULL;
		ok = p && strstr(p, state) &&
		     strcspn(p, "\n") > (size_t)(strstr(p, state) - p);
		if (ok) {
			free(out);
			return 1;
		}
		free(out);
		out = NULL;
		t_sleep_ms(200);
	}
	sh(cmd, &out, NULL);
	printf("    sacct --completion:\n%s\n", nz(out));
	free(out);
	return 0;
}

/* Jobs name the joined sites: the broker fixture also loads a static
 * federation file whose sites have no agents. */
static void test_three_stages_slurm_stage_ran(void)
{
	char file[700], text[4096], id[64], out_file[700], needle[128];
	int st;

	if (!g.ready) {
		t_skip("%s", g.skip[0] ? g.skip : "the federation is not up");
		return;
	}
	/* train asks for one a100: Slurm's is the cheapest by far. Every
	 * stage writes a file, which only a stage on Slurm really does. */
	snprintf(out_file, sizeof(out_file), "%s/e2e-%d", g.job_dir,
		 (int)getpid());
	snprintf(
	    text, sizeof(text),
	    "{\"name\": \"e2e-three\", "
	    "\"constraints\": {\"sites\": {\"allow\": [\"sim-a\", \"sim-b\", "
	    "\"slurm-e2e\"]}}, \"stages\": ["
	    "{\"name\": \"prep\", \"kind\": \"data-prep\", \"resources\": "
	    "{\"cpu\": 1, \"memory_mb\": 256}, \"duration_s\": 100, "
	    "\"command\": [\"echo\", \"prep\", \">\", \"%s-prep.out\"]},"
	    "{\"name\": \"train\", \"kind\": \"training\", \"after\": "
	    "[\"prep\"], \"resources\": {\"cpu\": 1, \"memory_mb\": 256, "
	    "\"gpu\": {\"count\": 1, \"models\": [\"a100\"]}}, "
	    "\"duration_s\": 100, \"command\": [\"sleep\", \"1\", \"&&\", "
	    "\"echo\", \"trained\", \">\", \"%s-train.out\"]},"
	    "{\"name\": \"serve\", \"kind\": \"inference\", \"after\": "
	    "[\"train\"], \"resources\": {\"cpu\": 1, \"memory_mb\": 256}, "
	    "\"duration_s\": 100, \"command\": [\"echo\", \"served\", "
	    "\">\", \"%s-serve.out\"]}]}",
	    out_file, out_file, out_file);
	T_OK(job_file("three", text, file, sizeof(file)));
	st = submit_wait(file, 150, id, sizeof(id), NULL);
	if (st != 0)
		dump_logs();
	T_EQ_INT(st, 0);
	json_t *job = get_job(id);
	T_ASSERT(job != NULL);
	T_EQ_STR(json_string_value(json_object_get(job, "state")), "succeeded");
	T_EQ_STR(site_of(job, "train"), names[SLURM]);
	const char *stages[] = {"prep", "train", "serve"};
	int on_slurm = 0;
	for (int i = 0; i < 3; i++) {
		json_t *s = stage_of(job, stages[i]);
		T_EQ_STR(json_string_value(json_object_get(s, "state")),
			 "succeeded");
		T_EQ_INT(json_integer_value(json_object_get(s, "exit_code")),
			 0);
		if (strcmp(nz(site_of(job, stages[i])), names[SLURM]) != 0)
			continue;
		on_slurm++;
		/* It really ran: its output file, and Slurm's record. */
		char path[800], *body = NULL;
		snprintf(path, sizeof(path), "%s-%s.out", out_file, stages[i]);
		T_EXPECT(t_read_file(path, &body, NULL) == 0);
		if (body)
			T_EQ_STR(body, i == 1	? "trained\n"
				       : i == 0 ? "prep\n"
						: "served\n");
		free(body);
		unlink(path);
		snprintf(needle, sizeof(needle), "mer:%s/%s", id, stages[i]);
		T_EXPECT(slurm_saw(needle, "|COMPLETED|0:0"));
	}
	T_EXPECT(on_slurm >= 1);
	json_decref(job);
}

static void test_input_only_on_slurm_places_prep_there(void)
{
	char file[700], text[2048], id[64];
	int st;

	if (!g.ready) {
		t_skip("%s", g.skip[0] ? g.skip : "the federation is not up");
		return;
	}
	/* Moving 1 TB off the Slurm site would cost more than anything
	 * else; the sim sites are otherwise as good for a small stage. */
	snprintf(text, sizeof(text),
		 "{\"name\": \"e2e-data\", "
		 "\"constraints\": {\"sites\": {\"allow\": [\"sim-a\", "
		 "\"sim-b\", \"slurm-e2e\"]}}, \"stages\": ["
		 "{\"name\": \"prep\", \"kind\": \"data-prep\", \"resources\": "
		 "{\"cpu\": 1, \"memory_mb\": 256}, \"inputs\": [{\"name\": "
		 "\"lab-data\", \"bytes\": 1000000000000}], \"outputs\": "
		 "[{\"name\": \"clean\", \"bytes\": 1000000}], \"duration_s\": "
		 "100, \"command\": [\"true\"]},"
		 "{\"name\": \"train\", \"kind\": \"training\", \"after\": "
		 "[\"prep\"], \"resources\": {\"cpu\": 4, \"memory_mb\": 1024, "
		 "\"gpu\": {\"count\": 8, \"models\": [\"a100\"]}}, "
		 "\"inputs\": [{\"name\": \"clean\"}], \"duration_s\": 100, "
		 "\"command\": [\"true\"]}]}");
	T_OK(job_file("data", text, file, sizeof(file)));
	st = submit_wait(file, 150, id, sizeof(id), NULL);
	if (st != 0)
		dump_logs();
	T_EQ_INT(st, 0);
	json_t *job = get_job(id);
	T_ASSERT(job != NULL);
	T_EQ_STR(site_of(job, "prep"), names[SLURM]);
	/* 8 GPUs in one stage: more than the Slurm node has. */
	T_EXPECT(strcmp(nz(site_of(job, "train")), names[SLURM]) != 0);
	char needle[128];
	snprintf(needle, sizeof(needle), "mer:%s/prep", id);
	T_EXPECT(slurm_saw(needle, "|COMPLETED|0:0"));
	json_decref(job);
}

static void test_malformed_job_one_line_error(void)
{
	char file[700], id[64], *err = NULL;
	int st;

	if (!F.dir) {
		t_skip("%s", g.skip[0] ? g.skip : "the federation is not up");
		return;
	}
	/* stages[0].resources.gpu.count is a string: found offline. */
	T_OK(job_file("bad",
		      "{\"name\": \"bad\",\n \"stages\": [{\"name\": \"a\", "
		      "\"resources\": {\"gpu\": {\"count\": \"two\"}}}]}\n",
		      file, sizeof(file)));
	st = submit_wait(file, 10, id, sizeof(id), &err);
	T_EQ_INT(st, 3);
	T_ASSERT(err != NULL);
	/* One line: "meridianctl: FILE:LINE:COL: field: what is wrong". */
	T_EQ_INT(strchr(err, '\n') - err + 1, (long long)strlen(err));
	T_EXPECT(strncmp(err, "meridianctl: ", 13) == 0);
	T_CONTAINS(err, "bad.json:2:");
	T_CONTAINS(err, "stages[0].resources.gpu.count");
	T_EQ_STR(id, "");
	free(err);
	err = NULL;
	/* Not JSON at all. */
	T_OK(job_file("garbage", "{\"name\": \"x\", \"stages\": [\n", file,
		      sizeof(file)));
	st = submit_wait(file, 10, id, sizeof(id), &err);
	T_EQ_INT(st, 3);
	T_ASSERT(err != NULL);
	T_EQ_INT(strchr(err, '\n') - err + 1, (long long)strlen(err));
	T_CONTAINS(err, "garbage.json:");
	free(err);
}

static void test_agent_killed_mid_run_stage_replaced(void)
{
	char file[700], text[2048], cmd[3000];
	int victim = -1;

	if (!g.ready) {
		t_skip("%s", g.skip[0] ? g.skip : "the federation is not up");
		return;
	}
	/* A long stage on one of the sim sites (30 s at time scale 100). */
	snprintf(text, sizeof(text),
		 "{\"name\": \"e2e-lost\", \"constraints\": {\"sites\": "
		 "{\"allow\": [\"sim-a\", \"sim-b\"]}}, \"stages\": ["
		 "{\"name\": \"long\", \"kind\": \"training\", \"resources\": "
		 "{\"cpu\": 2, \"memory_mb\": 1024, \"gpu\": {\"count\": 1, "
		 "\"models\": [\"a100\"]}}, \"duration_s\": 3000, "
		 "\"command\": [\"train\"]}]}");
	T_OK(job_file("lost", text, file, sizeof(file)));
	/* Submitted without --wait; followed through the API. */
	char *out = NULL, id[64];
	snprintf(cmd, sizeof(cmd),
		 "'%s/meridianctl' --url %s --token-file '%s' submit '%s'",
		 g.bin, F.base, g.acme_file, file);
	T_EQ_INT(sh(cmd, &out, NULL), 0);
	snprintf(id, sizeof(id), "%.*s", (int)strcspn(nz(out), "\n"), nz(out));
	free(out);
	T_ASSERT(id[0] == 'j');

	char first[64] = "";
	long long end = t_now_ms() + 30000;
	while (t_now_ms() < end && !first[0]) {
		json_t *job = get_job(id);
		json_t *s = stage_of(job, "long");
		if (!strcmp(nz(json_string_value(json_object_get(s, "state"))),
			    "running"))
			snprintf(first, sizeof(first), "%s",
				 nz(site_of(job, "long")));
		json_decref(job);
		if (!first[0])
			t_sleep_ms(100);
	}
	T_ASSERT(first[0]);
	for (int i = 0; i < NSITES; i++)
		if (!strcmp(first, names[i]))
			victim = i;
	T_ASSERT(victim == SIM_A || victim == SIM_B);
	/* The site's agent dies mid-run: no event will ever come. */
	kill(t_proc_pid(g.agents[victim]), SIGKILL);
	t_proc_stop(g.agents[victim], 2000, NULL);
	g.agents[victim] = NULL;

	json_t *job = NULL;
	end = t_now_ms() + 90000;
	while (t_now_ms() < end) {
		json_t *j = get_job(id);
		const char *st = json_string_value(json_object_get(j, "state"));
		if (st && (!strcmp(st, "succeeded") || !strcmp(st, "failed") ||
			   !strcmp(st, "cancelled"))) {
			job = j;
			break;
		}
		json_decref(j);
		t_sleep_ms(300);
	}
	if (!job || strcmp(nz(json_string_value(json_object_get(job, "state"))),
			   "succeeded") != 0)
		dump_logs();
	T_ASSERT(job != NULL);
	T_EQ_STR(json_string_value(json_object_get(job, "state")), "succeeded");
	const char *now = site_of(job, "long");
	T_EXPECT(now && strcmp(now, first) != 0);
	T_EXPECT(json_integer_value(
		     json_object_get(stage_of(job, "long"), "attempts")) >= 2);
	json_decref(job);
}

static void test_down(void)
{
	if (!F.dir) {
		t_skip("%s", g.skip[0] ? g.skip : "nothing was started");
		slurm_down();
		return;
	}
	for (int i = 0; i < NSITES; i++) {
		t_proc_stop(g.agents[i], 5000, NULL);
		g.agents[i] = NULL;
	}
	T_EQ_INT(bfx_stop_checked(&F), 0);
	bfx_free(&F);
	slurm_down();
	if (g.state[0])
		T_EXPECT(access(g.state, F_OK) != 0);
}

static const struct t_case cases[] = {
    {"up", test_up},
    {"three_stages_slurm_stage_ran", test_three_stages_slurm_stage_ran},
    {"input_only_on_slurm_places_prep_there",
     test_input_only_on_slurm_places_prep_there},
    {"malformed_job_one_line_error", test_malformed_job_one_line_error},
    {"agent_killed_mid_run_stage_replaced",
     test_agent_killed_mid_run_stage_replaced},
    {"down", test_down},
};

T_MAIN("e2e", cases)
