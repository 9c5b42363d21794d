/*
 * meridianctl's commands: argument parsing against one table of commands
 * and flags, the REST calls each command makes, and its output (tables for
 * people, -o json for scripts). Rendering helpers are in table.c, HTTP in
 * client.c; the broker's behaviour is docs/api.yaml's, not decided here.
 */
#include "cli/ctl.h"

#include <errno.h>
#include <inttypes.h>
#include <math.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <sodium.h>

#include "cli/client.h"
#include "cli/table.h"
#include "common/config.h"
#include "common/err.h"
#include "common/json.h"
#include "policy/job.h"
#include "policy/policy.h"

#define PROG "meridianctl"
#define DEFAULT_URL "http://127.0.0.1:8080"
#define DEFAULT_LINK_PORT 7400
#define MAX_POS 8
#define MAX_PAGES 100000
/* --wait keeps polling through a broker restart this long. */
#define WAIT_OUTAGE_MS 60000

/* ---- flags ------------------------------------------------------------- */

enum flag_id {
	F_URL,
	F_TOKEN,
	F_TOKEN_FILE,
	F_CA,
	F_OUTPUT,
	F_TIMEOUT,
	F_HELP,
	F_WAIT,
	F_INTERVAL,
	F_WAIT_TIMEOUT,
	F_IDEM,
	F_SITE,
	F_REGION,
	F_TTL,
	F_LINK,
	F_AGENT_CONFIG,
	F_STATE,
	F_NAME,
	F_TENANT,
	F_LIMIT,
	F_CANDIDATES,
	F_VERSION,
	F_COUNT
};

struct flag {
	const char *name;
	char shortc;
	const char *arg; /* NULL for a switch */
	const char *help;
};

static const struct flag flags[F_COUNT] = {
    [F_URL] = {"url", 0, "URL",
	       "broker REST URL (env MERIDIAN_URL; default " DEFAULT_URL ")"},
    [F_TOKEN] = {"token", 0, "TOKEN",
		 "bearer token (env MERIDIAN_TOKEN; prefer the env or "
		 "--token-file: arguments show in ps)"},
    [F_TOKEN_FILE] = {"token-file", 0, "FILE",
		      "read the bearer token from FILE"},
    [F_CA] = {"ca-file", 0, "FILE",
	      "CA certificates to trust for https (env MERIDIAN_CA_FILE)"},
    [F_OUTPUT] = {"output", 'o', "FORMAT",
		  "table (default, for people) or json (for scripts)"},
    [F_TIMEOUT] = {"timeout", 0, "DURATION",
		   "per request (default 30s; \"500ms\", \"1m\")"},
    [F_HELP] = {"help", 'h', NULL, "show help"},
    [F_WAIT] = {"wait", 'w', NULL,
		"follow the job to its end, a line per stage change; exit 0 "
		"only if it succeeded"},
    [F_INTERVAL] = {"interval", 0, "DURATION",
		    "how often --wait polls (default 1s)"},
    [F_WAIT_TIMEOUT] = {"wait-timeout", 0, "DURATION",
			"give up following after DURATION (exit 8)"},
    [F_IDEM] = {"idempotency-key", 0, "KEY",
		"Idempotency-Key to send (default: a random one); resending "
		"the same file with the same key cannot submit twice"},
    [F_SITE] = {"site", 0, "NAME", "the site the token is for"},
    [F_REGION] = {"region", 0, "REGION", "the site's region"},
    [F_TTL] = {"ttl", 0, "DURATION",
	       "how long the token may be used (default 1h, at most 30d)"},
    [F_LINK] = {"link", 0, "URL",
		"agent link address for the join line (env MERIDIAN_LINK; "
		"default tcp://<broker host>:7400)"},
    [F_AGENT_CONFIG] = {"agent-config", 0, "FILE",
			"site config path for the join line (default "
			"site.json)"},
    [F_STATE] = {"state", 0, "STATE",
		 "only jobs in STATE (pending, placed, dispatched, running, "
		 "succeeded, failed, cancelled)"},
    [F_NAME] = {"name", 0, "NAME", "only jobs with this exact name"},
    [F_TENANT] = {"tenant", 0, "TENANT", "only this tenant's jobs (admins)"},
    [F_LIMIT] = {"limit", 0, "N", "at most N jobs (default: all)"},
    [F_CANDIDATES] = {"candidates", 0, "N",
		      "sites listed per stage (default 0: every site)"},
    [F_VERSION] = {"version", 0, "N", "an older policy version"},
};

#define FB(f) (1u << (f))
#define GLOBAL_FLAGS                                                           \
	(FB(F_URL) | FB(F_TOKEN) | FB(F_TOKEN_FILE) | FB(F_CA) |               \
	 FB(F_OUTPUT) | FB(F_TIMEOUT) | FB(F_HELP))

struct ctx;
typedef int (*cmd_fn)(struct ctx *x);

struct cmd {
	const char *w1, *w2; /* words: "get", "jobs" */
	const char *args;    /* operands for the usage line */
	int nargs;	     /* operands required (and allowed) */
	unsigned flags;	     /* beyond GLOBAL_FLAGS */
	int remote;	     /* talks to the broker */
	cmd_fn run;
	const char *summary;
	const char *help;
};

struct ctx {
	FILE *out, *err;
	const char *val[F_COUNT]; /* flag values; "1" for switches */
	char *pos[MAX_POS];	  /* operands after the command words */
	int npos;
	int json;
	const struct cmd *cmd;
	struct mer_ctl_client cl;
	char url[512];
};

/* ---- errors and exit codes --------------------------------------------- */

int mer_ctl_exit_for_status(long status)
{
	if (status >= 200 && status < 300)
		return MER_CTL_OK;
	switch (status) {
	case 400:
	case 409:
	case 413:
	case 422:
		return MER_CTL_EXIT_INVALID;
	case 401:
	case 403:
		return MER_CTL_EXIT_AUTH;
	case 404:
		return MER_CTL_EXIT_NOTFOUND;
	default:
		return MER_CTL_EXIT_SERVER;
	}
}

/* Prints "meridianctl: <message>" as one line (line breaks in what the
 * message quotes are flattened) and returns code. */
static int fail(struct ctx *x, int code, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
static int fail(struct ctx *x, int code, const char *fmt, ...)
{
	char buf[2048];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	for (char *p = buf; *p; p++)
		if (*p == '\n' || *p == '\r')
			*p = ' ';
	fprintf(x->err, PROG ": %s\n", buf);
	return code;
}

static int usage_fail(struct ctx *x, const char *fmt, ...)
    __attribute__((format(printf, 2, 3)));
static int usage_fail(struct ctx *x, const char *fmt, ...)
{
	char buf[1024], cmd[64] = "";
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	if (x->cmd)
		snprintf(cmd, sizeof(cmd), " %s%s%s", x->cmd->w1,
			 x->cmd->w2 ? " " : "", x->cmd->w2 ? x->cmd->w2 : "");
	return fail(x, MER_CTL_EXIT_USAGE, "%s (see '" PROG "%s --help')", buf,
		    cmd);
}

static int err_exit(int mer)
{
	switch (mer) {
	case MER_EUNREACHABLE:
	case MER_ETIMEDOUT:
	case MER_ECRYPTO:
		return MER_CTL_EXIT_UNREACHABLE;
	case MER_ETOOBIG:
		return MER_CTL_EXIT_SERVER;
	default:
		return MER_CTL_EXIT_OTHER;
	}
}

/* One request. Returns MER_CTL_OK with a 2xx answer in a; otherwise
 * prints the one-line error and returns the exit code (a is cleared). */
static int call(struct ctx *x, const char *method, const char *path,
		const char *body, size_t len, const char *idem,
		struct mer_ctl_answer *a)
{
	char err[1024];
	int rv = mer_ctl_request(&x->cl, method, path, body, len, idem, a, err,
				 sizeof(err));

	if (rv)
		return fail(x, err_exit(rv), "%s", err);
	rv = mer_ctl_exit_for_status(a->status);
	if (rv == MER_CTL_OK) {
		if (!a->json) {
			mer_ctl_answer_clear(a);
			return fail(x, MER_CTL_EXIT_SERVER,
				    "%s %s: the broker's answer is not JSON",
				    method, path);
		}
		return 0;
	}
	mer_ctl_answer_error(a, err, sizeof(err));
	if (a->status == 401 && !x->cl.token[0])
		fail(x, rv, "%s; set MERIDIAN_TOKEN, --token or --token-file",
		     err);
	else
		fail(x, rv, "%s", err);
	mer_ctl_answer_clear(a);
	return rv;
}

static int print_json(struct ctx *x, const json_t *v)
{
	if (json_dumpf(v, x->out, JSON_INDENT(2) | JSON_SORT_KEYS) ||
	    fputc('\n', x->out) == EOF)
		return fail(x, MER_CTL_EXIT_OTHER, "cannot write the output");
	return 0;
}

/* ---- small helpers ----------------------------------------------------- */

static const char *jstr(const json_t *o, const char *k)
{
	return json_string_value(json_object_get(o, k));
}

static long long jint(const json_t *o, const char *k)
{
	const json_t *v = json_object_get(o, k);
	if (json_is_integer(v))
		return (long long)json_integer_value(v);
	if (json_is_real(v))
		return (long long)json_real_value(v);
	return 0;
}

static double jnum(const json_t *o, const char *k)
{
	const json_t *v = json_object_get(o, k);
	return json_is_number(v) ? json_number_value(v) : NAN;
}

static const char *nz(const char *s)
{
	return s ? s : "-";
}

static int parse_count(const char *s, long max, long *out)
{
	char *end;
	long v;

	if (!s || !*s || *s == '-' || *s == '+')
		return MER_EINVAL;
	errno = 0;
	v = strtol(s, &end, 10);
	if (errno || *end || v < 0 || v > max)
		return MER_EINVAL;
	*out = v;
	return 0;
}

static int terminal(const char *st)
{
	return st && (!strcmp(st, "succeeded") || !strcmp(st, "failed") ||
		      !strcmp(st, "cancelled"));
}

/* Reads FILE or stdin ("-") whole. */
static int read_input(struct ctx *x, const char *path, char **text, size_t *len,
		      const char **name)
{
	FILE *f = strcmp(path, "-") == 0 ? stdin : fopen(path, "r");
	size_t cap = 0, n = 0;
	char *buf = NULL;

	*name = strcmp(path, "-") == 0 ? "<stdin>" : path;
	if (!f)
		return fail(x, MER_CTL_EXIT_INVALID, "%s: %s", path,
			    strerror(errno));
	for (;;) {
		if (n + 4096 + 1 > cap) {
			char *nb;
			cap = cap ? cap * 2 : 8192;
			if (!(nb = realloc(buf, cap))) {
				free(buf);
				if (f != stdin)
					fclose(f);
				return fail(x, MER_CTL_EXIT_OTHER,
					    "out of memory");
			}
			buf = nb;
		}
		size_t k = fread(buf + n, 1, cap - n - 1, f);
		n += k;
		if (n > MER_JSON_MAX_BYTES) {
			free(buf);
			if (f != stdin)
				fclose(f);
			return fail(x, MER_CTL_EXIT_INVALID,
				    "%s: over %u bytes", *name,
				    MER_JSON_MAX_BYTES);
		}
		if (k == 0)
			break;
	}
	int bad = ferror(f);
	if (f != stdin)
		fclose(f);
	if (bad) {
		free(buf);
		return fail(x, MER_CTL_EXIT_INVALID, "%s: read error", *name);
	}
	buf[n] = 0;
	*text = buf;
	*len = n;
	return 0;
}

static int duration_flag(struct ctx *x, enum flag_id f, int64_t def,
			 int64_t *ms)
{
	*ms = def;
	if (!x->val[f])
		return 0;
	if (mer_cfg_parse_duration(x->val[f], ms) || *ms <= 0)
		return usage_fail(x, "--%s: not a duration (\"30s\", \"1h\")",
				  flags[f].name);
	return 0;
}

static void sleep_ms(int64_t ms)
{
	struct timespec ts = {(time_t)(ms / 1000), (long)(ms % 1000) * 1000000};
	while (nanosleep(&ts, &ts) == -1 && errno == EINTR)
		;
}

static long long now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ---- rendering ---------------------------------------------------------- */

static const char *stage_note(const json_t *s, char *buf, size_t n)
{
	const char *reason = jstr(s, "reason");

	buf[0] = 0;
	if (json_is_true(json_object_get(s, "cancel_requested")) &&
	    !terminal(jstr(s, "state")))
		snprintf(buf, n, "cancel requested");
	else if (reason && *reason)
		snprintf(buf, n, "%s", reason);
	return buf[0] ? buf : "";
}

static void print_stages(FILE *out, const json_t *job, long long now)
{
	static const char *const hdr[] = {"STAGE",   "KIND",  "STATE",
					  "SITE",    "TRIES", "EXIT",
					  "STARTED", "RAN",   "NOTE"};
	struct mer_table *t;
	const json_t *s;
	size_t i;

	if (mer_table_new(hdr, 9, &t))
		return;
	json_array_foreach (json_object_get(job, "stages"), i, s) {
		char st[40], ran[32], note[400];
		long long a = jint(s, "started_at"), b = jint(s, "finished_at");
		const json_t *ex = json_object_get(s, "exit_code");

		mer_fmt_age(now, a, st, sizeof(st));
		if (a > 0)
			mer_fmt_duration((double)((b > 0 ? b : now) - a), ran,
					 sizeof(ran));
		else
			snprintf(ran, sizeof(ran), "-");
		mer_table_row(t);
		mer_table_cell(t, "%s", nz(jstr(s, "name")));
		mer_table_cell(t, "%s", nz(jstr(s, "kind")));
		mer_table_cell(t, "%s", nz(jstr(s, "state")));
		mer_table_cell(t, "%s", nz(jstr(s, "site")));
		mer_table_cell(t, "%lld", jint(s, "attempts"));
		if (json_is_integer(ex))
			mer_table_cell(t, "%" JSON_INTEGER_FORMAT,
				       json_integer_value(ex));
		else
			mer_table_cell(t, "-");
		mer_table_cell(t, "%s", st);
		mer_table_cell(t, "%s", ran);
		mer_table_cell(t, "%s", stage_note(s, note, sizeof(note)));
	}
	mer_table_print(t, out, 0);
	mer_table_free(t);
}

void mer_ctl_print_job(FILE *out, const json_t *job, long long now)
{
	char c[48], u[48], age[40];
	const char *err = jstr(job, "error");

	mer_fmt_time(jint(job, "created_at"), c, sizeof(c));
	mer_fmt_age(now, jint(job, "created_at"), age, sizeof(age));
	mer_fmt_time(jint(job, "updated_at"), u, sizeof(u));
	fprintf(out, "Job:       %s\n", nz(jstr(job, "id")));
	fprintf(out, "Name:      %s\n", nz(jstr(job, "name")));
	fprintf(out, "Tenant:    %s\n", nz(jstr(job, "tenant")));
	fprintf(out, "Priority:  %s\n", nz(jstr(job, "priority")));
	fprintf(out, "State:     %s%s\n", nz(jstr(job, "state")),
		json_is_true(json_object_get(job, "cancel_requested")) &&
			!terminal(jstr(job, "state"))
		    ? " (cancel requested)"
		    : "");
	fprintf(out, "Created:   %s (%s)\n", c, age);
	fprintf(out, "Updated:   %s\n", u);
	if (err && *err)
		fprintf(out, "Error:     %s\n", err);
	fprintf(out, "\n");
	print_stages(out, job, now);
}

static void score_cells(struct mer_table *t, const json_t *sc)
{
	char b[6][32];

	mer_fmt_usd(jnum(sc, "compute_usd"), b[0], sizeof(b[0]));
	mer_fmt_usd(jnum(sc, "egress_usd"), b[1], sizeof(b[1]));
	mer_fmt_duration(jnum(sc, "transfer_s"), b[2], sizeof(b[2]));
	mer_fmt_duration(jnum(sc, "wait_s"), b[3], sizeof(b[3]));
	mer_fmt_duration(jnum(sc, "runtime_s"), b[4], sizeof(b[4]));
	mer_fmt_usd(jnum(sc, "policy_usd"), b[5], sizeof(b[5]));
	for (int k = 0; k < 6; k++)
		mer_table_cell(t, "%s", b[k]);
	double tot = jnum(sc, "total");
	if (isfinite(tot))
		mer_table_cell(t, "%.2f", tot);
	else
		mer_table_cell(t, "-");
}

/* "gpu:a100" -> "a100": the column or the parentheses say it is a GPU. */
static const char *gpu_name(const char *kind)
{
	if (!kind)
		return "";
	return strncmp(kind, "gpu:", 4) == 0 ? kind + 4 : kind;
}

static void print_stage_placement(FILE *out, const json_t *s)
{
	static const char *const fh[] = {"SITE",    "GPU",	"COMPUTE",
					 "EGRESS",  "TRANSFER", "WAIT",
					 "RUNTIME", "POLICY",	"SCORE"};
	static const char *const rh[] = {"SITE", "REJECTED BECAUSE"};
	struct mer_table *ft = NULL, *rt = NULL;
	const json_t *c, *counts = json_object_get(s, "rejections");
	const char *status = jstr(s, "status"), *note = jstr(s, "note");
	const char *k;
	const json_t *v;
	size_t i, listed = 0;

	fprintf(out, "\nStage %s: ", nz(jstr(s, "name")));
	if (status && !strcmp(status, "pending"))
		fprintf(out, "pending (no site can take it now)");
	else
		fprintf(out, "%s on %s%s%s%s", nz(status), nz(jstr(s, "site")),
			jstr(s, "gpu") ? " (" : "", gpu_name(jstr(s, "gpu")),
			jstr(s, "gpu") ? ")" : "");
	if (json_is_true(json_object_get(s, "preempts")))
		fprintf(out, ", preempting lower classes");
	fprintf(out, "; %lld feasible site(s)\n", jint(s, "feasible"));
	if (note && *note)
		fprintf(out, "  %s\n", note);
	/* One share of one replica says nothing the line above did not. */
	const json_t *shares = json_object_get(s, "replicas");
	if (json_array_size(shares) > 1 ||
	    jint(json_array_get(shares, 0), "replicas") > 1) {
		json_array_foreach (shares, i, c) {
			const char *g = jstr(c, "gpu");
			int has = g && strcmp(g, "none") != 0;
			fprintf(out, "  replicas: %lld on %s%s%s%s\n",
				jint(c, "replicas"), nz(jstr(c, "site")),
				has ? " (" : "", has ? gpu_name(g) : "",
				has ? ")" : "");
		}
	}
	if (mer_table_new(fh, 9, &ft) || mer_table_new(rh, 2, &rt))
		goto out;
	json_array_foreach (json_object_get(s, "candidates"), i, c) {
		const char *rej = jstr(c, "rejected");
		listed++;
		if (rej) {
			mer_table_row(rt);
			mer_table_cell(rt, "%s", nz(jstr(c, "site")));
			mer_table_cell(rt, "%s", rej);
			continue;
		}
		mer_table_row(ft);
		mer_table_cell(ft, "%s%s", nz(jstr(c, "site")),
			       json_is_true(json_object_get(c, "chosen")) ? " *"
									  : "");
		mer_table_cell(ft, "%s",
			       jstr(c, "gpu") ? gpu_name(jstr(c, "gpu")) : "-");
		score_cells(ft, json_object_get(c, "score"));
	}
	if (mer_table_rows(ft)) {
		fprintf(out, "\n");
		mer_table_print(ft, out, 2);
	}
	if (mer_table_rows(rt)) {
		fprintf(out, "\n");
		mer_table_print(rt, out, 2);
	}
	/* Counts cover every site even when the list was cut short. */
	if (json_object_size(counts)) {
		int first = 1;
		fprintf(out, "  rejections by reason:");
		json_object_foreach ((json_t *)counts, k, v) {
			fprintf(out, "%s %s %" JSON_INTEGER_FORMAT,
				first ? "" : ",", k, json_integer_value(v));
			first = 0;
		}
		fprintf(out, "\n");
	}
out:
	mer_table_free(ft);
	mer_table_free(rt);
}

void mer_ctl_print_placement(FILE *out, const json_t *p)
{
	const json_t *pv = json_object_get(p, "policy_version");
	char money[32], span[32], when[48], ver[64];
	const json_t *s;
	size_t i;

	mer_fmt_usd(jnum(p, "money_usd"), money, sizeof(money));
	mer_fmt_duration(jnum(p, "makespan_s"), span, sizeof(span));
	if (json_is_integer(pv))
		snprintf(ver, sizeof(ver), "%" JSON_INTEGER_FORMAT,
			 json_integer_value(pv));
	else
		snprintf(ver, sizeof(ver), "%s", nz(json_string_value(pv)));
	fprintf(out,
		"Placement: %s, method %s, policy %s, money %s, "
		"makespan %s",
		json_is_true(json_object_get(p, "complete")) ? "complete"
							     : "incomplete",
		nz(jstr(p, "method")), ver, money, span);
	if (json_is_true(json_object_get(p, "dry_run")))
		fprintf(out, " (dry run)");
	else if (jint(p, "placed_at") > 0) {
		mer_fmt_time(jint(p, "placed_at"), when, sizeof(when));
		fprintf(out, ", placed %s", when);
	}
	fprintf(out, "\n");
	if (jstr(p, "note") && *jstr(p, "note"))
		fprintf(out, "  %s\n", jstr(p, "note"));
	fprintf(out, "  Scores are the policy-weighted sum (lower wins); "
		     "* marks the chosen site.\n");
	json_array_foreach (json_object_get(p, "stages"), i, s)
		print_stage_placement(out, s);
}

/* GPUs by model over a site summary's pools: "a800 32/64, h800 0/8". */
static void site_gpus(const json_t *summary, char *buf, size_t n,
		      double *pending)
{
	json_t *free_by = json_object(), *tot_by = json_object();
	const json_t *pool, *r;
	const char *kind;
	size_t i, used = 0;

	*pending = 0;
	buf[0] = 0;
	if (!free_by || !tot_by)
		goto out;
	json_array_foreach (json_object_get(summary, "pools"), i, pool) {
		json_object_foreach (json_object_get(pool, "resources"), kind,
				     r) {
			if (strncmp(kind, "gpu:", 4) != 0)
				continue;
			double f = jnum(r, "free"), t = jnum(r, "total");
			double p = jnum(r, "pending");
			double f0 = jnum(free_by, kind + 4);
			double t0 = jnum(tot_by, kind + 4);
			json_object_set_new(free_by, kind + 4,
					    json_real((isfinite(f0) ? f0 : 0) +
						      (isfinite(f) ? f : 0)));
			json_object_set_new(tot_by, kind + 4,
					    json_real((isfinite(t0) ? t0 : 0) +
						      (isfinite(t) ? t : 0)));
			if (isfinite(p))
				*pending += p;
		}
	}
	/* Models in name order, so the column reads the same every time. */
	const char **names =
	    calloc(json_object_size(tot_by) + 1, sizeof(*names));
	size_t nn = 0;
	if (!names)
		goto out;
	json_object_foreach (tot_by, kind, r)
		names[nn++] = kind;
	for (size_t a = 1; a < nn; a++)
		for (size_t b = a; b > 0 && strcmp(names[b - 1], names[b]) > 0;
		     b--) {
			const char *tmp = names[b];
			names[b] = names[b - 1];
			names[b - 1] = tmp;
		}
	for (size_t a = 0; a < nn && used < n; a++) {
		int w = snprintf(
		    buf + used, n - used, "%s%s %.0f/%.0f", a ? ", " : "",
		    names[a], jnum(free_by, names[a]), jnum(tot_by, names[a]));
		if (w < 0)
			break;
		used += (size_t)w;
	}
	free(names);
	if (!nn)
		snprintf(buf, n, "none");
out:
	json_decref(free_by);
	json_decref(tot_by);
}

void mer_ctl_print_sites(FILE *out, const json_t *sites, long long now)
{
	static const char *const hdr[] = {
	    "SITE",	    "REGION",	  "HEALTH", "STATUS", "GPUS FREE/TOTAL",
	    "PENDING GPUS", "LAST REPORT"};
	struct mer_table *t;
	const json_t *s;
	size_t i;

	(void)now;
	if (mer_table_new(hdr, 7, &t))
		return;
	json_array_foreach (sites, i, s) {
		const json_t *sum = json_object_get(s, "summary");
		const json_t *age = json_object_get(s, "last_report_age_s");
		char gpus[256], st[64], rep[48];
		double pending = 0;
		size_t k = 0;

		st[0] = 0;
		if (json_is_true(json_object_get(s, "revoked")))
			k +=
			    (size_t)snprintf(st + k, sizeof(st) - k, "revoked");
		if (json_is_true(json_object_get(s, "drained")) ||
		    json_is_true(json_object_get(sum, "drained")))
			k += (size_t)snprintf(st + k, sizeof(st) - k, "%s%s",
					      k ? "," : "", "drained");
		if (json_is_true(json_object_get(s, "lost")))
			k += (size_t)snprintf(st + k, sizeof(st) - k, "%s%s",
					      k ? "," : "", "lost");
		if (!k)
			snprintf(st, sizeof(st), "active");
		if (json_is_object(sum))
			site_gpus(sum, gpus, sizeof(gpus), &pending);
		else
			snprintf(gpus, sizeof(gpus), "-");
		if (json_is_integer(age)) {
			char d[32];
			mer_fmt_duration((double)json_integer_value(age), d,
					 sizeof(d));
			snprintf(rep, sizeof(rep), "%s ago", d);
		} else {
			const char *src = jstr(s, "source");
			/* Static sites come from the federation file and
			 * never report. */
			snprintf(rep, sizeof(rep), "%s",
				 src && !strcmp(src, "static") ? "static file"
							       : "never");
		}
		mer_table_row(t);
		mer_table_cell(t, "%s", nz(jstr(s, "name")));
		mer_table_cell(t, "%s", nz(jstr(s, "region")));
		mer_table_cell(t, "%s", nz(jstr(s, "health")));
		mer_table_cell(t, "%s", st);
		mer_table_cell(t, "%s", gpus);
		if (json_is_object(sum))
			mer_table_cell(t, "%.0f", pending);
		else
			mer_table_cell(t, "-");
		mer_table_cell(t, "%s", rep);
	}
	mer_table_print(t, out, 0);
	mer_table_free(t);
}

/* ---- join line --------------------------------------------------------- */

/* Appends s to out, single-quoted when a shell would read any of it. */
static int shell_word(char *out, size_t n, size_t *used, const char *s)
{
	int plain = *s != 0;
	for (const char *p = s; *p; p++)
		if (!strchr("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVW"
			    "XYZ0123456789-_.:/=@+,%",
			    *p))
			plain = 0;
	if (plain) {
		int w = snprintf(out + *used, n - *used, "%s", s);
		if (w < 0 || (size_t)w >= n - *used)
			return MER_ETOOBIG;
		*used += (size_t)w;
		return 0;
	}
	if (*used + 1 >= n)
		return MER_ETOOBIG;
	out[(*used)++] = '\'';
	for (const char *p = s; *p; p++) {
		const char *piece = *p == '\'' ? "'\\''" : NULL;
		size_t pl = piece ? strlen(piece) : 1;
		if (*used + pl + 1 >= n)
			return MER_ETOOBIG;
		if (piece)
			memcpy(out + *used, piece, pl);
		else
			out[*used] = *p;
		*used += pl;
	}
	if (*used + 2 > n)
		return MER_ETOOBIG;
	out[(*used)++] = '\'';
	out[*used] = 0;
	return 0;
}

int mer_ctl_join_command(const char *link, const char *token,
			 const char *broker_key, const char *config, char *out,
			 size_t n)
{
	const char *parts[] = {"meridian-agent join --broker ",
			       link,
			       " --token ",
			       token,
			       " --broker-key ",
			       broker_key,
			       " --config ",
			       config};
	size_t used = 0;

	if (n == 0)
		return MER_ETOOBIG;
	out[0] = 0;
	for (size_t i = 0; i < sizeof(parts) / sizeof(parts[0]); i++) {
		if (i % 2 == 0) {
			size_t l = strlen(parts[i]);
			if (used + l >= n)
				return MER_ETOOBIG;
			memcpy(out + used, parts[i], l + 1);
			used += l;
		} else if (shell_word(out, n, &used,
				      parts[i] ? parts[i] : "")) {
			return MER_ETOOBIG;
		}
	}
	return 0;
}

int mer_ctl_default_link(const char *rest_url, char *out, size_t n)
{
	const char *h = strstr(rest_url, "://");
	size_t len;

	h = h ? h + 3 : rest_url;
	/* userinfo@ is not the host */
	const char *at = strchr(h, '@'), *slash = strchr(h, '/');
	if (at && (!slash || at < slash))
		h = at + 1;
	if (*h == '[') {
		const char *e = strchr(h, ']');
		if (!e)
			return MER_EINVAL;
		len = (size_t)(e - h) + 1;
	} else {
		len = strcspn(h, ":/?#");
	}
	if (len == 0)
		return MER_EINVAL;
	int w =
	    snprintf(out, n, "tcp://%.*s:%d", (int)len, h, DEFAULT_LINK_PORT);
	return w < 0 || (size_t)w >= n ? MER_ETOOBIG : 0;
}

/* ---- commands ---------------------------------------------------------- */

static int escaped_path(struct ctx *x, char *out, size_t n, const char *fmt,
			const char *arg, const char *suffix)
{
	char e[512];

	if (mer_ctl_escape(arg, e, sizeof(e)))
		return usage_fail(x, "argument too long");
	snprintf(out, n, fmt, e, suffix ? suffix : "");
	return 0;
}

/* Validates a job file offline; the text is kept for sending as is. */
static int load_job(struct ctx *x, const char *path, char **text, size_t *len)
{
	const char *name;
	struct mer_job *job = NULL;
	char err[1024];
	int rv;

	if ((rv = read_input(x, path, text, len, &name)))
		return rv;
	rv = mer_job_parse(name, *text, *len, &job, err, sizeof(err));
	mer_job_free(job);
	if (rv) {
		free(*text);
		*text = NULL;
		if (rv == MER_ENOMEM)
			return fail(x, MER_CTL_EXIT_OTHER, "out of memory");
		return fail(x, MER_CTL_EXIT_INVALID, "%s", err);
	}
	return 0;
}

static void stage_line(struct ctx *x, FILE *f, const json_t *s, long long t0,
		       int width)
{
	char el[32], ran[32], extra[400] = "";
	long long a = jint(s, "started_at"), b = jint(s, "finished_at");
	const json_t *ex = json_object_get(s, "exit_code");
	const char *st = jstr(s, "state"), *reason = jstr(s, "reason");
	size_t k = 0;

	(void)x;
	mer_fmt_duration((double)(now_ms() - t0) / 1000.0, el, sizeof(el));
	if (jint(s, "attempts") > 1)
		k += (size_t)snprintf(extra + k, sizeof(extra) - k,
				      "  attempt %lld", jint(s, "attempts"));
	if (terminal(st) && a > 0 && b >= a && k < sizeof(extra)) {
		mer_fmt_duration((double)(b - a), ran, sizeof(ran));
		k += (size_t)snprintf(extra + k, sizeof(extra) - k, "  ran %s",
				      ran);
	}
	if (json_is_integer(ex) && k < sizeof(extra))
		k += (size_t)snprintf(extra + k, sizeof(extra) - k,
				      "  exit %" JSON_INTEGER_FORMAT,
				      json_integer_value(ex));
	if (st && !strcmp(st, "pending") && reason && *reason &&
	    k < sizeof(extra))
		snprintf(extra + k, sizeof(extra) - k, "  (%s)", reason);
	fprintf(f, "+%-7s %-*s  %-10s  %-16s%s\n", el, width,
		nz(jstr(s, "name")), nz(st), nz(jstr(s, "site")), extra);
	fflush(f);
}

/* Follows job id until it ends; returns the exit code. */
static int follow(struct ctx *x, const char *id)
{
	FILE *prog = x->json ? x->err : x->out;
	int64_t interval, limit;
	char path[640], err[1024];
	json_t *seen = json_object(), *last = NULL;
	long long t0 = now_ms(), outage = 0;
	int rv, width = 5;

	if (!seen)
		return fail(x, MER_CTL_EXIT_OTHER, "out of memory");
	if ((rv = duration_flag(x, F_INTERVAL, 1000, &interval)) ||
	    (rv = duration_flag(x, F_WAIT_TIMEOUT, 0, &limit)))
		goto out;
	escaped_path(x, path, sizeof(path), "/v1/jobs/%s%s", id, NULL);
	for (;;) {
		struct mer_ctl_answer a;
		rv = mer_ctl_request(&x->cl, "GET", path, NULL, 0, NULL, &a,
				     err, sizeof(err));
		if (!rv && a.status >= 500)
			mer_ctl_answer_error(&a, err, sizeof(err));
		if (rv || a.status >= 500 || !a.json) {
			/* A broker restarting or failing over: keep
			 * following for a while, as the job lives on. */
			if (!outage) {
				outage = now_ms();
				fprintf(x->err, PROG ": %s; retrying\n", err);
			}
			if (now_ms() - outage > WAIT_OUTAGE_MS) {
				rv = fail(
				    x, rv ? err_exit(rv) : MER_CTL_EXIT_SERVER,
				    "gave up following job %s: %s", id, err);
				mer_ctl_answer_clear(&a);
				goto out;
			}
			mer_ctl_answer_clear(&a);
			sleep_ms(interval);
			continue;
		}
		outage = 0;
		if ((rv = mer_ctl_exit_for_status(a.status))) {
			mer_ctl_answer_error(&a, err, sizeof(err));
			mer_ctl_answer_clear(&a);
			rv = fail(x, rv, "%s", err);
			goto out;
		}
		json_decref(last);
		last = json_incref(a.json);
		mer_ctl_answer_clear(&a);
		const json_t *s;
		size_t i;
		json_array_foreach (json_object_get(last, "stages"), i, s) {
			int w = (int)strlen(nz(jstr(s, "name")));
			if (w > width && w < 40)
				width = w;
		}
		json_array_foreach (json_object_get(last, "stages"), i, s) {
			char key[512];
			const char *name = nz(jstr(s, "name"));
			snprintf(key, sizeof(key), "%s|%s|%lld|%s",
				 nz(jstr(s, "state")), nz(jstr(s, "site")),
				 jint(s, "attempts"), nz(jstr(s, "reason")));
			const char *was = jstr(seen, name);
			if (was && !strcmp(was, key))
				continue;
			json_object_set_new(seen, name, json_string(key));
			stage_line(x, prog, s, t0, width);
		}
		const char *st = jstr(last, "state");
		if (terminal(st))
			break;
		if (limit > 0 && now_ms() - t0 >= limit) {
			rv = fail(x, MER_CTL_EXIT_JOB,
				  "job %s still %s after --wait-timeout %s", id,
				  nz(st), x->val[F_WAIT_TIMEOUT]);
			goto out;
		}
		sleep_ms(interval);
	}
	const char *st = jstr(last, "state");
	char el[32];
	mer_fmt_duration((double)(now_ms() - t0) / 1000.0, el, sizeof(el));
	if (x->json)
		print_json(x, last);
	if (!strcmp(st, "succeeded")) {
		if (!x->json)
			fprintf(x->out, "job %s succeeded after %s\n", id, el);
		rv = 0;
		goto out;
	}
	/* Name the first stage that did not succeed, for the one line. */
	const json_t *s, *bad = NULL;
	size_t i;
	json_array_foreach (json_object_get(last, "stages"), i, s) {
		const char *ss = jstr(s, "state");
		if (!bad && ss && !strcmp(ss, "failed"))
			bad = s;
	}
	if (bad && json_is_integer(json_object_get(bad, "exit_code")))
		rv = fail(
		    x, MER_CTL_EXIT_JOB,
		    "job %s %s after %s: stage %s failed at %s (exit "
		    "%" JSON_INTEGER_FORMAT ")",
		    id, st, el, nz(jstr(bad, "name")), nz(jstr(bad, "site")),
		    json_integer_value(json_object_get(bad, "exit_code")));
	else if (bad)
		rv =
		    fail(x, MER_CTL_EXIT_JOB,
			 "job %s %s after %s: stage %s failed%s%s", id, st, el,
			 nz(jstr(bad, "name")), jstr(last, "error") ? ": " : "",
			 jstr(last, "error") ? jstr(last, "error") : "");
	else
		rv =
		    fail(x, MER_CTL_EXIT_JOB, "job %s %s after %s", id, st, el);
out:
	json_decref(seen);
	json_decref(last);
	return rv;
}

static int cmd_submit(struct ctx *x)
{
	char *text = NULL, idem[64];
	size_t len = 0;
	struct mer_ctl_answer a;
	int rv;

	if ((rv = load_job(x, x->pos[0], &text, &len)))
		return rv;
	if (x->val[F_IDEM]) {
		size_t l = strlen(x->val[F_IDEM]);
		if (l < 1 || l > 255) {
			free(text);
			return usage_fail(x, "--idempotency-key: 1 to 255 "
					     "characters");
		}
		for (const char *p = x->val[F_IDEM]; *p; p++)
			if ((unsigned char)*p < 0x21 || *p == 0x7f) {
				free(text);
				return usage_fail(
				    x, "--idempotency-key: printable "
				       "characters only");
			}
	} else {
		/* A fresh key per run: a retry inside libcurl or a proxy
		 * cannot store the job twice. */
		unsigned char r[12];
		randombytes_buf(r, sizeof(r));
		memcpy(idem, "ctl-", 4);
		sodium_bin2hex(idem + 4, sizeof(idem) - 4, r, sizeof(r));
	}
	rv = call(x, "POST", "/v1/jobs", text, len,
		  x->val[F_IDEM] ? x->val[F_IDEM] : idem, &a);
	free(text);
	if (rv)
		return rv;
	const char *id = jstr(a.json, "id");
	if (!id) {
		mer_ctl_answer_clear(&a);
		return fail(x, MER_CTL_EXIT_SERVER,
			    "the broker accepted the job but sent no id");
	}
	char idc[256];
	snprintf(idc, sizeof(idc), "%s", id);
	if (x->json && !x->val[F_WAIT])
		rv = print_json(x, a.json);
	else if (!x->json)
		fprintf(x->out, "%s\n", idc);
	else
		fprintf(x->err, "%s\n", idc);
	fflush(x->out);
	mer_ctl_answer_clear(&a);
	if (rv || !x->val[F_WAIT])
		return rv;
	return follow(x, idc);
}

static int cmd_get_jobs(struct ctx *x)
{
	static const char *const hdr[] = {"ID",	   "NAME",     "TENANT",
					  "STATE", "PRIORITY", "AGE"};
	json_t *all = json_array();
	char cursor[512] = "";
	long limit = 0;
	int rv = 0;

	if (!all)
		return fail(x, MER_CTL_EXIT_OTHER, "out of memory");
	if (x->val[F_LIMIT] &&
	    (parse_count(x->val[F_LIMIT], 1000000, &limit) || limit < 1)) {
		json_decref(all);
		return usage_fail(x, "--limit: a number from 1");
	}
	for (int page = 0; page < MAX_PAGES; page++) {
		char path[2048], e[600];
		size_t k = (size_t)snprintf(path, sizeof(path), "/v1/jobs?");
		const enum flag_id qf[] = {F_STATE, F_NAME, F_TENANT};
		const char *qn[] = {"state", "name", "tenant"};
		for (int i = 0; i < 3; i++) {
			if (!x->val[qf[i]])
				continue;
			if (mer_ctl_escape(x->val[qf[i]], e, sizeof(e))) {
				json_decref(all);
				return usage_fail(x, "--%s: too long",
						  flags[qf[i]].name);
			}
			k += (size_t)snprintf(path + k, sizeof(path) - k,
					      "%s=%s&", qn[i], e);
		}
		if (limit) {
			long left = limit - (long)json_array_size(all);
			k += (size_t)snprintf(path + k, sizeof(path) - k,
					      "limit=%ld&",
					      left < 100 ? left : 100);
		}
		if (cursor[0] && !mer_ctl_escape(cursor, e, sizeof(e)))
			k += (size_t)snprintf(path + k, sizeof(path) - k,
					      "cursor=%s&", e);
		path[k - 1] = 0; /* the last '&' or the lone '?' */
		struct mer_ctl_answer a;
		if ((rv = call(x, "GET", path, NULL, 0, NULL, &a)))
			goto out;
		json_array_extend(all, json_object_get(a.json, "jobs"));
		const char *next = jstr(a.json, "next_cursor");
		snprintf(cursor, sizeof(cursor), "%s", next ? next : "");
		mer_ctl_answer_clear(&a);
		if (!cursor[0] ||
		    (limit && (long)json_array_size(all) >= limit))
			break;
	}
	if (x->json) {
		json_t *o = json_pack("{s:O}", "jobs", all);
		rv = o ? print_json(x, o) : MER_CTL_EXIT_OTHER;
		json_decref(o);
		goto out;
	}
	struct mer_table *t;
	if (mer_table_new(hdr, 6, &t)) {
		rv = fail(x, MER_CTL_EXIT_OTHER, "out of memory");
		goto out;
	}
	long long now = (long long)time(NULL);
	const json_t *j;
	size_t i;
	json_array_foreach (all, i, j) {
		char age[40];
		mer_fmt_age(now, jint(j, "created_at"), age, sizeof(age));
		mer_table_row(t);
		mer_table_cell(t, "%s", nz(jstr(j, "id")));
		mer_table_cell(t, "%s", nz(jstr(j, "name")));
		mer_table_cell(t, "%s", nz(jstr(j, "tenant")));
		mer_table_cell(t, "%s", nz(jstr(j, "state")));
		mer_table_cell(t, "%s", nz(jstr(j, "priority")));
		mer_table_cell(t, "%s", age);
	}
	if (mer_table_rows(t))
		mer_table_print(t, x->out, 0);
	else
		fprintf(x->out, "no jobs\n");
	mer_table_free(t);
out:
	json_decref(all);
	return rv;
}

static int get_job_json(struct ctx *x, const char *id, json_t **out)
{
	struct mer_ctl_answer a;
	char path[640];
	int rv;

	*out = NULL;
	if ((rv = escaped_path(x, path, sizeof(path), "/v1/jobs/%s%s", id,
			       NULL)) ||
	    (rv = call(x, "GET", path, NULL, 0, NULL, &a)))
		return rv;
	*out = json_incref(a.json);
	mer_ctl_answer_clear(&a);
	return 0;
}

static int cmd_get_job(struct ctx *x)
{
	json_t *job;
	int rv = get_job_json(x, x->pos[0], &job);

	if (rv)
		return rv;
	if (x->json)
		rv = print_json(x, job);
	else
		mer_ctl_print_job(x->out, job, (long long)time(NULL));
	json_decref(job);
	return rv;
}

static int cmd_describe_job(struct ctx *x)
{
	json_t *job, *pl = NULL;
	struct mer_ctl_answer a;
	char path[640], err[1024];
	int rv = get_job_json(x, x->pos[0], &job);

	if (rv)
		return rv;
	escaped_path(x, path, sizeof(path), "/v1/jobs/%s%s", x->pos[0],
		     "/placement");
	rv = mer_ctl_request(&x->cl, "GET", path, NULL, 0, NULL, &a, err,
			     sizeof(err));
	if (rv) {
		rv = fail(x, err_exit(rv), "%s", err);
		goto out;
	}
	const char *code = jstr(a.json, "error");
	if (a.status == 200 && a.json) {
		pl = json_incref(a.json);
	} else if (!(a.status == 404 && code && !strcmp(code, "not_placed"))) {
		/* not_placed is an answer, not an error: the job is
		 * simply waiting for its first placement round. */
		rv = mer_ctl_exit_for_status(a.status);
		mer_ctl_answer_error(&a, err, sizeof(err));
		rv = fail(x, rv ? rv : MER_CTL_EXIT_SERVER, "%s", err);
		mer_ctl_answer_clear(&a);
		goto out;
	}
	mer_ctl_answer_clear(&a);
	if (x->json) {
		json_t *o = json_pack("{s:O, s:O}", "job", job, "placement",
				      pl ? pl : json_null());
		rv = o ? print_json(x, o) : MER_CTL_EXIT_OTHER;
		json_decref(o);
		goto out;
	}
	mer_ctl_print_job(x->out, job, (long long)time(NULL));
	fprintf(x->out, "\n");
	if (pl)
		mer_ctl_print_placement(x->out, pl);
	else
		fprintf(x->out, "Placement: not placed yet\n");
out:
	json_decref(job);
	json_decref(pl);
	return rv;
}

static int cmd_cancel(struct ctx *x)
{
	struct mer_ctl_answer a;
	char path[640];
	int rv;

	if ((rv = escaped_path(x, path, sizeof(path), "/v1/jobs/%s%s",
			       x->pos[0], NULL)) ||
	    (rv = call(x, "DELETE", path, NULL, 0, NULL, &a)))
		return rv;
	if (x->json) {
		rv = print_json(x, a.json);
	} else if (a.status == 202) {
		int live = 0;
		const json_t *s;
		size_t i;
		json_array_foreach (json_object_get(a.json, "stages"), i, s)
			live += !terminal(jstr(s, "state"));
		fprintf(x->out,
			"job %s: cancel requested; %d running stage(s) "
			"stopping\n",
			x->pos[0], live);
	} else {
		fprintf(x->out, "job %s: %s\n", x->pos[0],
			nz(jstr(a.json, "state")));
	}
	mer_ctl_answer_clear(&a);
	return rv;
}

static int cmd_dry_run(struct ctx *x)
{
	char *text = NULL, path[64];
	size_t len = 0;
	long cand = 0;
	struct mer_ctl_answer a;
	int rv;

	if (x->val[F_CANDIDATES] &&
	    parse_count(x->val[F_CANDIDATES], 100000, &cand))
		return usage_fail(x, "--candidates: a number from 0");
	if ((rv = load_job(x, x->pos[0], &text, &len)))
		return rv;
	snprintf(path, sizeof(path), "/v1/placements:dry-run?candidates=%ld",
		 cand);
	rv = call(x, "POST", path, text, len, NULL, &a);
	free(text);
	if (rv)
		return rv;
	if (x->json)
		rv = print_json(x, a.json);
	else
		mer_ctl_print_placement(x->out, a.json);
	mer_ctl_answer_clear(&a);
	return rv;
}

static int cmd_get_sites(struct ctx *x)
{
	struct mer_ctl_answer a;
	json_t *sites;
	int rv;

	if ((rv = call(x, "GET", "/v1/sites", NULL, 0, NULL, &a)))
		return rv;
	sites = json_incref(json_object_get(a.json, "sites"));
	mer_ctl_answer_clear(&a);
	if (!json_is_array(sites)) {
		json_decref(sites);
		return fail(x, MER_CTL_EXIT_SERVER,
			    "the broker's site list has no \"sites\" array");
	}
	/* The list leaves summaries out to stay small; the capacity
	 * columns need each site's latest one. */
	json_t *s;
	size_t i;
	json_array_foreach (sites, i, s) {
		char path[640];
		const char *name = jstr(s, "name");
		if (!name || escaped_path(x, path, sizeof(path),
					  "/v1/sites/%s%s", name, NULL))
			continue;
		rv = call(x, "GET", path, NULL, 0, NULL, &a);
		if (rv == MER_CTL_EXIT_NOTFOUND) {
			rv = 0; /* revoked or gone meanwhile */
			continue;
		}
		if (rv)
			goto out;
		json_object_set(s, "summary",
				json_object_get(a.json, "summary"));
		mer_ctl_answer_clear(&a);
	}
	if (x->json) {
		json_t *o = json_pack("{s:O}", "sites", sites);
		rv = o ? print_json(x, o) : MER_CTL_EXIT_OTHER;
		json_decref(o);
	} else if (json_array_size(sites) == 0) {
		fprintf(x->out, "no sites\n");
	} else {
		mer_ctl_print_sites(x->out, sites, (long long)time(NULL));
	}
out:
	json_decref(sites);
	return rv;
}

static int cmd_get_site(struct ctx *x)
{
	static const char *const hdr[] = {"POOL", "RESOURCE", "TOTAL",
					  "FREE", "PENDING",  "WAIT"};
	struct mer_ctl_answer a;
	char path[640];
	int rv;

	if ((rv = escaped_path(x, path, sizeof(path), "/v1/sites/%s%s",
			       x->pos[0], NULL)) ||
	    (rv = call(x, "GET", path, NULL, 0, NULL, &a)))
		return rv;
	if (x->json) {
		rv = print_json(x, a.json);
		mer_ctl_answer_clear(&a);
		return rv;
	}
	json_t *arr = json_array();
	json_array_append(arr, a.json);
	mer_ctl_print_sites(x->out, arr, (long long)time(NULL));
	json_decref(arr);
	const json_t *sum = json_object_get(a.json, "summary"), *pool, *r;
	struct mer_table *t;
	size_t i;
	const char *kind;
	if (json_is_object(sum) && !mer_table_new(hdr, 6, &t)) {
		json_array_foreach (json_object_get(sum, "pools"), i, pool) {
			char w[32];
			mer_fmt_duration(jnum(pool, "est_wait_s"), w,
					 sizeof(w));
			json_object_foreach (json_object_get(pool, "resources"),
					     kind, r) {
				mer_table_row(t);
				mer_table_cell(t, "%s", nz(jstr(pool, "name")));
				mer_table_cell(t, "%s", kind);
				mer_table_cell(t, "%.0f", jnum(r, "total"));
				mer_table_cell(t, "%.0f", jnum(r, "free"));
				if (isfinite(jnum(r, "pending")))
					mer_table_cell(t, "%.0f",
						       jnum(r, "pending"));
				else
					mer_table_cell(t, "-");
				mer_table_cell(t, "%s", w);
			}
		}
		fprintf(x->out, "\n");
		mer_table_print(t, x->out, 0);
		mer_table_free(t);
		fprintf(x->out, "\ndatasets: %zu\n",
			json_array_size(json_object_get(sum, "datasets")));
	}
	mer_ctl_answer_clear(&a);
	return 0;
}

static int site_action(struct ctx *x, const char *method, const char *suffix,
		       const char *done)
{
	struct mer_ctl_answer a;
	char path[640];
	int rv;

	if ((rv = escaped_path(x, path, sizeof(path), "/v1/sites/%s%s",
			       x->pos[0], suffix)) ||
	    (rv = call(x, method, path, NULL, 0, NULL, &a)))
		return rv;
	if (x->json)
		rv = print_json(x, a.json);
	else
		fprintf(x->out, "site %s %s\n", x->pos[0], done);
	mer_ctl_answer_clear(&a);
	return rv;
}

static int cmd_site_drain(struct ctx *x)
{
	return site_action(x, "POST", ":drain",
			   "drained: no new placements; running stages "
			   "finish");
}

static int cmd_site_undrain(struct ctx *x)
{
	return site_action(x, "POST", ":undrain",
			   "undrained: accepting placements");
}

static int cmd_site_revoke(struct ctx *x)
{
	return site_action(x, "DELETE", "",
			   "revoked: its key is refused from now on");
}

static int cmd_token_create(struct ctx *x)
{
	char link[512], line[2048], exp[48], left[32];
	struct mer_ctl_answer a;
	int64_t ttl_ms;
	json_t *body;
	char *text;
	int rv;

	if (!x->val[F_SITE] || !x->val[F_REGION])
		return usage_fail(x, "token create needs --site and --region");
	if ((rv = duration_flag(x, F_TTL, 3600000, &ttl_ms)))
		return rv;
	const char *lk =
	    x->val[F_LINK] ? x->val[F_LINK] : getenv("MERIDIAN_LINK");
	if (lk && *lk)
		snprintf(link, sizeof(link), "%s", lk);
	else if (mer_ctl_default_link(x->url, link, sizeof(link)))
		return usage_fail(x,
				  "cannot tell the link address from %s; "
				  "give --link",
				  x->url);
	body = json_pack("{s:s, s:s}", "site", x->val[F_SITE], "region",
			 x->val[F_REGION]);
	if (body && x->val[F_TTL])
		json_object_set_new(body, "ttl", json_string(x->val[F_TTL]));
	text = body ? json_dumps(body, JSON_COMPACT) : NULL;
	json_decref(body);
	if (!text)
		return fail(x, MER_CTL_EXIT_OTHER, "out of memory");
	rv = call(x, "POST", "/v1/tokens", text, strlen(text), NULL, &a);
	free(text);
	if (rv)
		return rv;
	const char *tok = jstr(a.json, "token"),
		   *fp = jstr(a.json, "broker_key");
	if (!tok) {
		mer_ctl_answer_clear(&a);
		return fail(x, MER_CTL_EXIT_SERVER,
			    "the broker made a token but sent none back");
	}
	if (mer_ctl_join_command(link, tok, fp ? fp : "UNKNOWN",
				 x->val[F_AGENT_CONFIG] ? x->val[F_AGENT_CONFIG]
							: "site.json",
				 line, sizeof(line))) {
		sodium_memzero(a.body, a.len);
		mer_ctl_answer_clear(&a);
		return fail(x, MER_CTL_EXIT_OTHER, "join line too long");
	}
	if (!fp)
		fprintf(x->err,
			PROG ": warning: the broker has no key file, so there "
			     "is no fingerprint to pin; the agent cannot join "
			     "until it has one\n");
	/* The token is printed because it was asked for: this is the only
	 * place meridianctl ever shows one. */
	if (x->json) {
		json_object_set_new(a.json, "link", json_string(link));
		json_object_set_new(a.json, "join_command", json_string(line));
		rv = print_json(x, a.json);
	} else {
		mer_fmt_time(jint(a.json, "expires_at"), exp, sizeof(exp));
		mer_fmt_duration((double)(jint(a.json, "expires_at") -
					  jint(a.json, "created_at")),
				 left, sizeof(left));
		fprintf(x->out,
			"Join token for site %s (region %s), single use, "
			"expires %s (in %s):\n\n"
			"  token       %s\n"
			"  broker key  %s\n\n"
			"On the site, as the site admin, run:\n\n"
			"  %s\n\n"
			"Keep the token secret; only its hash is stored.\n",
			nz(jstr(a.json, "site")), nz(jstr(a.json, "region")),
			exp, left, tok, fp ? fp : "(none)", line);
	}
	sodium_memzero(line, sizeof(line));
	sodium_memzero(a.body, a.len);
	mer_ctl_answer_clear(&a);
	return rv;
}

/* Validates a policy file offline; *text keeps the bytes to send. */
static int check_policy(struct ctx *x, const char *path, char **text,
			size_t *len, char *name, size_t n)
{
	const char *fname;
	struct mer_policy *pol = NULL;
	char err[1024];
	int rv;

	if ((rv = read_input(x, path, text, len, &fname)))
		return rv;
	rv = mer_policy_parse(fname, *text, *len, &pol, err, sizeof(err));
	if (rv) {
		free(*text);
		*text = NULL;
		return rv == MER_ENOMEM
			   ? fail(x, MER_CTL_EXIT_OTHER, "out of memory")
			   : fail(x, MER_CTL_EXIT_INVALID, "%s", err);
	}
	snprintf(name, n, "%s", pol->version ? pol->version : "");
	mer_policy_free(pol);
	return 0;
}

static int cmd_policy_check(struct ctx *x)
{
	char *text = NULL, name[256];
	size_t len;
	int rv = check_policy(x, x->pos[0], &text, &len, name, sizeof(name));

	free(text);
	if (rv)
		return rv;
	if (x->json) {
		json_t *o = json_pack("{s:s, s:b, s:s}", "file", x->pos[0],
				      "valid", 1, "version", name);
		rv = o ? print_json(x, o) : MER_CTL_EXIT_OTHER;
		json_decref(o);
	} else {
		fprintf(x->out, "%s: valid (policy \"%s\")\n", x->pos[0], name);
	}
	return rv;
}

static int cmd_policy_apply(struct ctx *x)
{
	char *text = NULL, name[256];
	struct mer_ctl_answer a;
	size_t len;
	int rv = check_policy(x, x->pos[0], &text, &len, name, sizeof(name));

	if (rv)
		return rv;
	rv = call(x, "PUT", "/v1/policy", text, len, NULL, &a);
	free(text);
	if (rv)
		return rv;
	if (x->json)
		rv = print_json(x, a.json);
	else
		fprintf(x->out, "policy \"%s\" in force as version %lld\n",
			nz(jstr(a.json, "name")), jint(a.json, "version"));
	mer_ctl_answer_clear(&a);
	return rv;
}

static int cmd_get_policy(struct ctx *x)
{
	struct mer_ctl_answer a;
	char path[64] = "/v1/policy", when[48];
	long ver;
	int rv;

	if (x->val[F_VERSION]) {
		if (parse_count(x->val[F_VERSION], 1L << 40, &ver) || ver < 1)
			return usage_fail(x, "--version: a number from 1");
		snprintf(path, sizeof(path), "/v1/policy?version=%ld", ver);
	}
	if ((rv = call(x, "GET", path, NULL, 0, NULL, &a)))
		return rv;
	if (x->json) {
		rv = print_json(x, a.json);
	} else {
		mer_fmt_time(jint(a.json, "applied_at"), when, sizeof(when));
		fprintf(x->out, "Policy \"%s\", version %lld, applied %s%s%s\n",
			nz(jstr(a.json, "name")), jint(a.json, "version"), when,
			jstr(a.json, "by") ? " by " : "",
			jstr(a.json, "by") ? jstr(a.json, "by") : "");
		const json_t *doc = json_object_get(a.json, "policy");
		if (doc)
			rv = print_json(x, doc);
	}
	mer_ctl_answer_clear(&a);
	return rv;
}

/* ---- the command table and help ---------------------------------------- */

static const struct cmd cmds[] = {
    {"submit", NULL, "FILE|-", 1,
     FB(F_WAIT) | FB(F_INTERVAL) | FB(F_WAIT_TIMEOUT) | FB(F_IDEM), 1,
     cmd_submit, "submit a job file (or stdin) and print its id",
     "Checks the job file offline first (a malformed file gets one line,\n"
     "file:line:column: field: what is wrong, and exit 3), then submits\n"
     "it and prints the new job's id. With --wait, follows the job: one\n"
     "line per stage change (time since submission, stage, state, site),\n"
     "and exits 0 only if the job succeeded (8 if it failed, was\n"
     "cancelled or --wait-timeout passed). With -o json the job record is\n"
     "printed at the end and progress goes to stderr."},
    {"get", "jobs", "", 0,
     FB(F_STATE) | FB(F_NAME) | FB(F_TENANT) | FB(F_LIMIT), 1, cmd_get_jobs,
     "list jobs (all pages)",
     "Lists jobs oldest first, following the broker's pages. Tenants see\n"
     "their own jobs; admins see every tenant's unless --tenant."},
    {"get", "job", "ID", 1, 0, 1, cmd_get_job,
     "one job with its stages, sites, timings and exit codes",
     "Shows a job: state, stages (kind, state, site, attempts, exit code,\n"
     "when started, how long it ran, why it is still pending)."},
    {"describe", "job", "ID", 1, 0, 1, cmd_describe_job,
     "a job and its placement explanation",
     "Shows the job as 'get job' does, then how each stage was placed:\n"
     "for every site either the score terms (compute and egress money,\n"
     "transfer time, expected wait, runtime, policy bonus or penalty and\n"
     "the weighted score; * marks the chosen site) or why it was\n"
     "rejected."},
    {"cancel", NULL, "ID", 1, 0, 1, cmd_cancel, "cancel a job",
     "Cancels a job. Stages not yet dispatched end at once; running ones\n"
     "are stopped by their site (the job shows 'cancel requested' until\n"
     "they have). Cancelling a finished job changes nothing."},
    {"dry-run", NULL, "FILE|-", 1, FB(F_CANDIDATES), 1, cmd_dry_run,
     "place a job file without submitting it",
     "Checks the job file offline, then asks the broker where it would\n"
     "place it now and why, without submitting it."},
    {"get", "sites", "", 0, 0, 1, cmd_get_sites, "sites and their capacity",
     "A capacity table: site, region, health, status (active, drained,\n"
     "revoked, lost), GPUs free/total by model, GPU demand queued at the\n"
     "site (pending), and the age of its last report."},
    {"get", "site", "NAME", 1, 0, 1, cmd_get_site, "one site with its pools",
     "One site's row of 'get sites', then each pool's resources (total,\n"
     "free, pending) and expected wait."},
    {"site", "drain", "NAME", 1, 0, 1, cmd_site_drain,
     "stop new placements on a site (admin)",
     "Stops new placements on the site; stages running there finish."},
    {"site", "undrain", "NAME", 1, 0, 1, cmd_site_undrain,
     "accept placements on a site again (admin)",
     "Lets the placement engine use a drained site again."},
    {"site", "revoke", "NAME", 1, 0, 1, cmd_site_revoke,
     "cut a site off the federation at once (admin)",
     "Revokes the site's key: its agent is refused from now on and the\n"
     "site leaves placement at once. It can come back only by joining\n"
     "again with a new token."},
    {"token", "create", "", 0,
     FB(F_SITE) | FB(F_REGION) | FB(F_TTL) | FB(F_LINK) | FB(F_AGENT_CONFIG), 1,
     cmd_token_create, "make a one-time join token for a site (admin)",
     "Creates a single-use join token for a site and prints it (the only\n"
     "command that ever shows a token), the broker key fingerprint to pin,\n"
     "and the exact 'meridian-agent join' line for the site admin. The\n"
     "broker stores only the token's hash."},
    {"policy", "check", "FILE|-", 1, 0, 0, cmd_policy_check,
     "validate a policy file offline",
     "Validates a policy file with the broker's own policy library,\n"
     "without contacting the broker: 'valid', or one line\n"
     "file:line:column: field: what is wrong (exit 3)."},
    {"policy", "apply", "FILE|-", 1, 0, 1, cmd_policy_apply,
     "validate a policy file and put it in force (admin)",
     "Validates the file offline, then sends it to the broker, which\n"
     "validates it again, stores it as a new version and uses it for\n"
     "placements from then on. A bad file changes nothing."},
    {"get", "policy", "", 0, FB(F_VERSION), 1, cmd_get_policy,
     "the policy in force (or an older version)",
     "Shows the policy in force: its name, version, when and by whom it\n"
     "was applied, and the document."},
};
#define NCMDS (sizeof(cmds) / sizeof(cmds[0]))

static const char exit_codes[] =
    "Exit codes:\n"
    "  0  success\n"
    "  1  local trouble (out of memory, cannot write output)\n"
    "  2  usage: unknown command or flag, missing argument\n"
    "  3  invalid input: malformed job or policy file (file:line:column),\n"
    "     or the broker refused it (400, 409, 413, 422)\n"
    "  4  authentication: no token, unknown token (401) or wrong role "
    "(403)\n"
    "  5  not found (404): no such job, site or policy version\n"
    "  6  server error (5xx) or an answer that makes no sense\n"
    "  7  broker unreachable: connection refused, TLS failure, timeout\n"
    "  8  submit --wait: the job failed, was cancelled, or "
    "--wait-timeout passed\n";

static void print_flag(FILE *f, enum flag_id i)
{
	char left[64];

	if (flags[i].shortc)
		snprintf(left, sizeof(left), "-%c, --%s%s%s", flags[i].shortc,
			 flags[i].name, flags[i].arg ? " " : "",
			 flags[i].arg ? flags[i].arg : "");
	else
		snprintf(left, sizeof(left), "    --%s%s%s", flags[i].name,
			 flags[i].arg ? " " : "",
			 flags[i].arg ? flags[i].arg : "");
	fprintf(f, "  %-28s ", left);
	/* Wrapped to 80 columns under the description column. */
	const char *h = flags[i].help;
	while (*h) {
		size_t n = strlen(h), cut = n;
		if (n > 49) {
			cut = 49;
			while (cut > 0 && h[cut] != ' ')
				cut--;
			if (cut == 0)
				cut = strcspn(h, " ");
		}
		fprintf(f, "%.*s\n", (int)cut, h);
		h += cut;
		while (*h == ' ')
			h++;
		if (*h)
			fprintf(f, "%31s", "");
	}
}

/* The usage line, wrapped at 80 columns (col: where it starts). */
static void cmd_usage(FILE *f, const struct cmd *c, int col)
{
	char w[96];
	int n = fprintf(f, "%s %s%s%s%s%s", PROG, c->w1, c->w2 ? " " : "",
			c->w2 ? c->w2 : "", *c->args ? " " : "", c->args);

	col += n > 0 ? n : 0;
	for (int i = 0; i <= F_COUNT; i++) {
		if (i == F_COUNT)
			snprintf(w, sizeof(w), "[global flags]");
		else if (c->flags & FB(i))
			snprintf(w, sizeof(w), "[--%s%s%s]", flags[i].name,
				 flags[i].arg ? " " : "",
				 flags[i].arg ? flags[i].arg : "");
		else
			continue;
		if (col + 1 + (int)strlen(w) > 79) {
			fprintf(f, "\n%8s", "");
			col = 8;
		}
		col += fprintf(f, " %s", w);
	}
	fprintf(f, "\n");
}

static void help_cmd(FILE *f, const struct cmd *c)
{
	fprintf(f, "usage: ");
	cmd_usage(f, c, 7);
	fprintf(f, "\n%s\n", c->help);
	if (c->flags) {
		fprintf(f, "\nFlags:\n");
		for (int i = 0; i < F_COUNT; i++)
			if (c->flags & FB(i))
				print_flag(f, i);
	}
	fprintf(f, "\nGlobal flags:\n");
	for (int i = 0; i < F_COUNT; i++)
		if (GLOBAL_FLAGS & FB(i))
			print_flag(f, i);
	fprintf(f, "\n%s", exit_codes);
}

static void help_all(FILE *f)
{
	fprintf(f,
		"usage: %s COMMAND [ARGS] [FLAGS]\n\n"
		"The command line of Meridian's broker: submit and follow "
		"jobs, read\n"
		"placements, look after sites, join tokens and policy. "
		"docs/CLI.md has more.\n\nCommands:\n",
		PROG);
	for (size_t i = 0; i < NCMDS; i++) {
		char left[64];
		snprintf(left, sizeof(left), "%s%s%s%s%s", cmds[i].w1,
			 cmds[i].w2 ? " " : "", cmds[i].w2 ? cmds[i].w2 : "",
			 *cmds[i].args ? " " : "", cmds[i].args);
		fprintf(f, "  %-22s %s\n", left, cmds[i].summary);
	}
	fprintf(f, "\nGlobal flags (before or after the command):\n");
	for (int i = 0; i < F_COUNT; i++)
		if (GLOBAL_FLAGS & FB(i))
			print_flag(f, i);
	fprintf(f,
		"\nEnvironment: MERIDIAN_URL, MERIDIAN_TOKEN, "
		"MERIDIAN_CA_FILE, MERIDIAN_LINK.\n"
		"'%s COMMAND --help' shows a command's flags.\n\n%s",
		PROG, exit_codes);
}

/* ---- parsing and dispatch ---------------------------------------------- */

static int find_flag(const char *a, int *id, const char **inline_val)
{
	*inline_val = NULL;
	if (a[0] == '-' && a[1] && a[1] != '-') {
		if (a[2])
			return MER_ENOTFOUND;
		for (int i = 0; i < F_COUNT; i++)
			if (flags[i].shortc == a[1]) {
				*id = i;
				return 0;
			}
		return MER_ENOTFOUND;
	}
	const char *n = a + 2, *eq = strchr(n, '=');
	size_t len = eq ? (size_t)(eq - n) : strlen(n);
	for (int i = 0; i < F_COUNT; i++)
		if (strlen(flags[i].name) == len &&
		    !strncmp(flags[i].name, n, len)) {
			*id = i;
			*inline_val = eq ? eq + 1 : NULL;
			return 0;
		}
	/* Spelling the CA flag as curl does. */
	if (len == 6 && !strncmp(n, "cacert", 6)) {
		*id = F_CA;
		*inline_val = eq ? eq + 1 : NULL;
		return 0;
	}
	return MER_ENOTFOUND;
}

static int read_token_file(struct ctx *x, const char *path, char *out, size_t n)
{
	FILE *f = fopen(path, "r");
	size_t k;

	if (!f)
		return fail(x, MER_CTL_EXIT_AUTH, "--token-file %s: %s", path,
			    strerror(errno));
	k = fread(out, 1, n - 1, f);
	fclose(f);
	out[k] = 0;
	while (k > 0 && (out[k - 1] == '\n' || out[k - 1] == '\r' ||
			 out[k - 1] == ' ' || out[k - 1] == '\t'))
		out[--k] = 0;
	if (k == 0 || k >= n - 1) {
		sodium_memzero(out, n);
		return fail(x, MER_CTL_EXIT_AUTH,
			    "--token-file %s: empty or too long", path);
	}
	return 0;
}

static int connect_broker(struct ctx *x)
{
	char token[MER_CTL_TOKEN_MAX], err[512];
	const char *url =
	    x->val[F_URL] ? x->val[F_URL] : getenv("MERIDIAN_URL");
	const char *ca =
	    x->val[F_CA] ? x->val[F_CA] : getenv("MERIDIAN_CA_FILE");
	int64_t timeout;
	int rv;

	if ((rv = duration_flag(x, F_TIMEOUT, 30000, &timeout)))
		return rv;
	token[0] = 0;
	if (x->val[F_TOKEN]) {
		snprintf(token, sizeof(token), "%s", x->val[F_TOKEN]);
	} else if (x->val[F_TOKEN_FILE]) {
		if ((rv = read_token_file(x, x->val[F_TOKEN_FILE], token,
					  sizeof(token))))
			return rv;
	} else if (getenv("MERIDIAN_TOKEN")) {
		snprintf(token, sizeof(token), "%s", getenv("MERIDIAN_TOKEN"));
	}
	snprintf(x->url, sizeof(x->url), "%s", url && *url ? url : DEFAULT_URL);
	if (ca && *ca && access(ca, R_OK) != 0) {
		sodium_memzero(token, sizeof(token));
		return usage_fail(x, "CA file %s: %s", ca, strerror(errno));
	}
	rv = mer_ctl_client_init(&x->cl, x->url, token, ca && *ca ? ca : NULL,
				 (long)timeout, err, sizeof(err));
	sodium_memzero(token, sizeof(token));
	if (rv == MER_EINVAL)
		return usage_fail(x, "%s", err);
	if (rv)
		return fail(x, MER_CTL_EXIT_OTHER, "%s", err);
	return 0;
}

int mer_ctl_main(int argc, char **argv, FILE *out, FILE *err)
{
	struct ctx x;
	char *words[MAX_POS + 2];
	int nwords = 0, rv;

	memset(&x, 0, sizeof(x));
	x.out = out;
	x.err = err;
	for (int i = 1; i < argc; i++) {
		const char *a = argv[i], *iv;
		int id;
		if (!strcmp(a, "--")) {
			for (i++; i < argc; i++) {
				if (nwords >= MAX_POS + 2)
					return usage_fail(&x,
							  "too many arguments");
				words[nwords++] = argv[i];
			}
			break;
		}
		if (a[0] != '-' || !strcmp(a, "-")) {
			if (nwords >= MAX_POS + 2)
				return usage_fail(&x, "too many arguments");
			words[nwords++] = argv[i];
			continue;
		}
		if (find_flag(a, &id, &iv))
			return usage_fail(&x, "unknown flag %s", a);
		if (!flags[id].arg) {
			if (iv)
				return usage_fail(&x, "--%s takes no value",
						  flags[id].name);
			x.val[id] = "1";
		} else if (iv) {
			x.val[id] = iv;
		} else if (i + 1 < argc) {
			x.val[id] = argv[++i];
		} else {
			return usage_fail(&x, "%s needs a value", a);
		}
	}
	/* "help submit" is "submit --help". */
	int help = x.val[F_HELP] != NULL;
	int skip = 0;
	if (nwords && !strcmp(words[0], "help")) {
		help = 1;
		skip = 1;
	}
	if (nwords == skip) {
		if (help) {
			help_all(out);
			return 0;
		}
		help_all(err);
		return MER_CTL_EXIT_USAGE;
	}
	const struct cmd *c = NULL;
	for (size_t i = 0; i < NCMDS && !c; i++) {
		if (strcmp(cmds[i].w1, words[skip]))
			continue;
		if (!cmds[i].w2 ||
		    (nwords > skip + 1 && !strcmp(cmds[i].w2, words[skip + 1])))
			c = &cmds[i];
	}
	if (!c) {
		int known = 0;
		for (size_t i = 0; i < NCMDS; i++)
			known |= !strcmp(cmds[i].w1, words[skip]);
		if (known && nwords > skip + 1)
			return usage_fail(&x, "unknown command '%s %s'",
					  words[skip], words[skip + 1]);
		if (known && help) {
			for (size_t i = 0; i < NCMDS; i++)
				if (!strcmp(cmds[i].w1, words[skip]))
					cmd_usage(out, &cmds[i], 0);
			return 0;
		}
		if (known)
			return usage_fail(&x, "'%s' needs a subcommand",
					  words[skip]);
		return usage_fail(&x, "unknown command '%s'", words[skip]);
	}
	x.cmd = c;
	if (help) {
		help_cmd(out, c);
		return 0;
	}
	int first = skip + (c->w2 ? 2 : 1);
	x.npos = nwords - first;
	if (x.npos != c->nargs)
		return x.npos < c->nargs
			   ? usage_fail(&x, "missing %s", c->args)
			   : usage_fail(&x, "unexpected argument '%s'",
					words[first + c->nargs]);
	for (int i = 0; i < x.npos; i++)
		x.pos[i] = words[first + i];
	for (int i = 0; i < F_COUNT; i++)
		if (x.val[i] && !((GLOBAL_FLAGS | c->flags) & FB(i)))
			return usage_fail(&x, "--%s does not apply here",
					  flags[i].name);
	if (x.val[F_OUTPUT]) {
		if (!strcmp(x.val[F_OUTPUT], "json"))
			x.json = 1;
		else if (strcmp(x.val[F_OUTPUT], "table"))
			return usage_fail(&x, "-o: table or json");
	}
	if (c->remote && (rv = connect_broker(&x)))
		return rv;
	rv = c->run(&x);
	mer_ctl_client_close(&x.cl);
	if (fflush(out) == EOF && rv == 0)
		rv = fail(&x, MER_CTL_EXIT_OTHER, "cannot write the output");
	return rv;
}
