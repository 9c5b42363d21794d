/*
 * The agent's running core: probe with backoff, summaries, idempotent
 * launch and cancel, stage follow-up and the state file. The state file is
 * rewritten whole (write to a temp file, fsync, rename, fsync the
 * directory) after every change, before the change is acknowledged to the
 * broker, so what the broker was told is never ahead of what a restarted
 * agent knows. Not the link loop (main.c) and no scheduler specifics.
 */
#include "site-agent/runner.h"

#include <errno.h>
#include <fcntl.h>
#include <libgen.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <time.h>
#include <unistd.h>

#include "common/err.h"
#include "common/json.h"
#include "common/log.h"
#include "site-agent/summary.h"

#define STATE_VERSION 1
#define KEEP_FINISHED_S (24 * 3600) /* a finished stage is remembered */
#define BACKOFF_MIN_MS 1000

struct held {
	char id[MER_AGENT_NAME_MAX];
	char job_id[MER_AGENT_NAME_MAX];
	enum mer_agent_stage_state state;
	int exit_code;
	int cancel;	/* cancel asked for */
	int submitting; /* launch begun, job id not saved yet */
	long long ended_at;
	json_t *spec; /* the launch command's stage object */
	struct mer_agent_stage st;
};

struct mer_agent {
	const struct mer_agent_cfg *cfg;
	const struct adapter_ops *ops;
	void *inst;
	struct mer_agent_capacity *cap; /* last good probe */
	int have_cap;
	char unhealthy[512];
	long long next_probe_ms;
	long long backoff_ms;
	struct held *h;
	size_t nh, caph;
	json_t *events; /* unacknowledged, persisted */
	int readonly;	/* --print-summary: never submits, cancels or saves */
	int lock_fd;	/* flock on "<state_file>.lock", -1 if none */
	int64_t epoch;	/* highest leader epoch a command carried (saved) */
};

static long long mono_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (long long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

/* ------------------------------------------------------------ stages */

static int name_ok(const char *s, size_t max)
{
	size_t n = s ? strlen(s) : 0;

	if (n == 0 || n > max)
		return 0;
	for (size_t i = 0; i < n; i++) {
		char c = s[i];
		if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
		      (c >= '0' && c <= '9') || c == '.' || c == '_' ||
		      c == '-' || c == ':' || c == '/' || c == '#'))
			return 0;
	}
	return 1;
}

static int get_int(const json_t *j, const char *k, int64_t lo, int64_t hi,
		   int64_t *out, char *err, size_t errlen)
{
	const json_t *v = json_object_get(j, k);

	if (!v)
		return 0;
	if (!json_is_integer(v) || json_integer_value(v) < lo ||
	    json_integer_value(v) > hi) {
		snprintf(err, errlen,
			 "stage.%s: must be an integer from %lld "
			 "to %lld",
			 k, (long long)lo, (long long)hi);
		return MER_EINVAL;
	}
	*out = json_integer_value(v);
	return 0;
}

static int get_str(const json_t *j, const char *k, int required, char **out,
		   char *err, size_t errlen)
{
	const json_t *v = json_object_get(j, k);

	if (!v) {
		if (!required)
			return 0;
		snprintf(err, errlen, "stage.%s: required", k);
		return MER_EINVAL;
	}
	if (!json_is_string(v) || (required && !*json_string_value(v))) {
		snprintf(err, errlen, "stage.%s: must be a non-empty string",
			 k);
		return MER_EINVAL;
	}
	if (!(*out = strdup(json_string_value(v))))
		return MER_ENOMEM;
	return 0;
}

int mer_agent_stage_parse(const json_t *j, struct mer_agent_stage *st,
			  char *err, size_t errlen)
{
	const char *id, *pool, *model;
	int64_t x = 0;
	double d;
	int rv;

	memset(st, 0, sizeof(*st));
	if (!json_is_object(j)) {
		snprintf(err, errlen, "stage: must be an object");
		return MER_EINVAL;
	}
	id = json_string_value(json_object_get(j, "id"));
	if (!name_ok(id, 120)) {
		snprintf(err, errlen,
			 "stage.id: must be 1-120 characters of "
			 "A-Z a-z 0-9 . _ : / # -");
		return MER_EINVAL;
	}
	snprintf(st->id, sizeof(st->id), "%s", id);
	pool = json_string_value(json_object_get(j, "pool"));
	if (pool && *pool && (!name_ok(pool, 63) || strchr(pool, '#'))) {
		snprintf(err, errlen, "stage.pool: not a pool name");
		return MER_EINVAL;
	}
	snprintf(st->pool, sizeof(st->pool), "%s", pool ? pool : "");
	model = json_string_value(json_object_get(j, "gpu_model"));
	if (model && *model &&
	    (!name_ok(model, 63) || strchr(model, ':') || strchr(model, '/') ||
	     strchr(model, '#'))) {
		snprintf(err, errlen, "stage.gpu_model: not a GPU model name");
		return MER_EINVAL;
	}
	snprintf(st->gpu_model, sizeof(st->gpu_model), "%s",
		 model ? model : "");
	if ((rv = get_str(j, "command", 1, &st->command, err, errlen)) ||
	    (rv = get_str(j, "image", 0, &st->image, err, errlen)) ||
	    (rv = get_str(j, "output", 0, &st->output, err, errlen)) ||
	    (rv = get_str(j, "workdir", 0, &st->workdir, err, errlen)) ||
	    (rv = get_int(j, "cpus", 0, 100000, &st->cpus, err, errlen)) ||
	    (rv = get_int(j, "memory_mb", 0, 1LL << 40, &st->memory_mb, err,
			  errlen)) ||
	    (rv = get_int(j, "gpus", 0, 4096, &st->gpus, err, errlen)) ||
	    (rv = get_int(j, "replicas", 0, 100000, &st->replicas, err,
			  errlen)) ||
	    (rv = get_int(j, "time_limit_s", 0, 1LL << 32, &st->time_limit_s,
			  err, errlen)) ||
	    (rv = get_int(j, "exit_code", 0, 255, &x, err, errlen)))
		goto fail_clear_stage;
	st->exit_code = (int)x;
	st->gang = json_is_true(json_object_get(j, "gang"));
	if (json_object_get(j, "duration_s")) {
		d = json_number_value(json_object_get(j, "duration_s"));
		if (!json_is_number(json_object_get(j, "duration_s")) ||
		    d < 0 || d > 1e9) {
			snprintf(err, errlen,
				 "stage.duration_s: must be a "
				 "number of seconds");
			rv = MER_EINVAL;
			goto fail_clear_stage;
		}
		st->duration_s = d;
	}
	return 0;
fail_clear_stage:
	mer_agent_stage_clear(st);
	return rv;
}

static struct held *held_find(struct mer_agent *a, const char *id)
{
	for (size_t i = 0; i < a->nh; i++) {
		if (strcmp(a->h[i].id, id) == 0)
			return &a->h[i];
	}
	return NULL;
}

static void held_clear(struct held *h)
{
	json_decref(h->spec);
	mer_agent_stage_clear(&h->st);
	memset(h, 0, sizeof(*h));
}

static void held_remove(struct mer_agent *a, struct held *h)
{
	size_t i = (size_t)(h - a->h);

	held_clear(h);
	memmove(&a->h[i], &a->h[i + 1], (a->nh - i - 1) * sizeof(*h));
	a->nh--;
}

static struct held *held_add(struct mer_agent *a, const char *id,
			     const json_t *spec, char *err, size_t errlen)
{
	struct held *h;

	if (a->nh == a->caph) {
		size_t cap = a->caph ? a->caph * 2 : 16;
		struct held *q = realloc(a->h, cap * sizeof(*q));
		if (!q)
			return NULL;
		a->h = q;
		a->caph = cap;
	}
	h = &a->h[a->nh];
	memset(h, 0, sizeof(*h));
	snprintf(h->id, sizeof(h->id), "%s", id);
	h->exit_code = -1;
	if (spec) {
		if (mer_agent_stage_parse(spec, &h->st, err, errlen))
			return NULL;
		h->spec = json_incref((json_t *)spec);
	}
	a->nh++;
	return h;
}

/* ------------------------------------------------------------ state file */

static int save_state(struct mer_agent *a)
{
	const char *path = a->cfg->state_file;
	char tmp[4096] = "", dir[4096];
	json_t *root, *arr;
	char *text = NULL;
	int fd = -1, rv = MER_ENOMEM, tmp_made = 0;
	size_t len;

	if (!path || !*path || a->readonly)
		return 0;
	arr = json_array();
	root = json_pack("{s:i, s:o, s:O, s:I}", "version", STATE_VERSION,
			 "stages", arr, "events", a->events, "epoch",
			 (json_int_t)a->epoch);
	if (!root)
		return MER_ENOMEM;
	for (size_t i = 0; i < a->nh; i++) {
		struct held *h = &a->h[i];
		json_t *e = json_pack("{s:s, s:s, s:s, s:i, s:b, s:b, s:I}",
				      "id", h->id, "job_id", h->job_id, "state",
				      mer_agent_stage_state_name(h->state),
				      "exit_code", h->exit_code, "cancel",
				      h->cancel, "submitting", h->submitting,
				      "ended_at", (json_int_t)h->ended_at);
		if (!e || json_array_append_new(arr, e))
			goto out_close_tmp;
		if (h->spec && json_object_set(e, "spec", h->spec))
			goto out_close_tmp;
	}
	if (!(text = json_dumps(root, JSON_COMPACT)))
		goto out_close_tmp;
	rv = MER_EIO;
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", path) >= (int)sizeof(tmp))
		goto out_close_tmp;
	fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	if (fd < 0)
		goto out_close_tmp;
	tmp_made = 1;
	len = strlen(text);
	for (size_t off = 0; off < len;) {
		ssize_t w = write(fd, text + off, len - off);
		if (w < 0 && errno == EINTR)
			continue;
		if (w <= 0)
			goto out_close_tmp;
		off += (size_t)w;
	}
	if (fsync(fd) != 0 || close(fd) != 0) {
		fd = -1;
		goto out_close_tmp;
	}
	fd = -1;
	if (rename(tmp, path) != 0)
		goto out_close_tmp;
	tmp_made = 0;
	/* The rename is durable only once the directory is synced. */
	snprintf(dir, sizeof(dir), "%s", path);
	fd = open(dirname(dir), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
	if (fd >= 0)
		fsync(fd);
	rv = 0;
out_close_tmp:
	if (fd >= 0)
		close(fd);
	if (rv == MER_EIO) {
		mer_error("cannot write the state file", "path=%s error=%s",
			  path, strerror(errno));
		/* No half-written temp file left behind (the rename may
		 * have happened: then there is none to remove). */
		if (tmp_made)
			unlink(tmp);
	}
	free(text);
	json_decref(root);
	return rv;
}

static int state_parse(const char *name)
{
	static const char *const n[] = {"pending", "running",	"succeeded",
					"failed",  "cancelled", "lost"};
	for (int i = 0; i < 6; i++)
		if (name && strcmp(name, n[i]) == 0)
			return i;
	return -1;
}

static int load_state(struct mer_agent *a, char *err, size_t errlen)
{
	struct mer_json_doc doc = {0};
	const char *path = a->cfg->state_file;
	json_t *e;
	size_t i;
	int rv;

	if (!path || !*path || access(path, F_OK) != 0)
		return 0;
	if ((rv = mer_json_doc_load(path, 0, 0, &doc, err, errlen)))
		return rv;
	rv = MER_EPARSE;
	if (json_integer_value(json_object_get(doc.root, "version")) !=
		STATE_VERSION ||
	    !json_is_array(json_object_get(doc.root, "stages")) ||
	    !json_is_array(json_object_get(doc.root, "events"))) {
		snprintf(err, errlen,
			 "%s: not a meridian-agent state file "
			 "(version %d)",
			 path, STATE_VERSION);
		goto out_free_doc;
	}
	json_array_foreach (json_object_get(doc.root, "stages"), i, e) {
		const char *id = json_string_value(json_object_get(e, "id"));
		const char *job =
		    json_string_value(json_object_get(e, "job_id"));
		int state =
		    state_parse(json_string_value(json_object_get(e, "state")));
		json_t *spec = json_object_get(e, "spec");
		struct held *h;
		char perr[256];

		if (!id || !job || state < 0) {
			mer_json_doc_errf(&doc, "stages", err, errlen,
					  "stage %zu is malformed", i);
			goto out_free_doc;
		}
		if (!(h = held_add(a, id, spec, perr, sizeof(perr)))) {
			snprintf(err, errlen, "%s: stage %s: %s", path, id,
				 perr);
			goto out_free_doc;
		}
		snprintf(h->job_id, sizeof(h->job_id), "%s", job);
		h->state = (enum mer_agent_stage_state)state;
		h->exit_code =
		    (int)json_integer_value(json_object_get(e, "exit_code"));
		h->cancel = json_is_true(json_object_get(e, "cancel"));
		h->submitting = json_is_true(json_object_get(e, "submitting"));
		h->ended_at =
		    json_integer_value(json_object_get(e, "ended_at"));
	}
	json_array_extend(a->events, json_object_get(doc.root, "events"));
	/* Absent in files written before epochs: 0 accepts any. */
	a->epoch = json_integer_value(json_object_get(doc.root, "epoch"));
	rv = 0;
out_free_doc:
	mer_json_doc_free(&doc);
	return rv;
}

/* ------------------------------------------------------------ events */

static int add_event(struct mer_agent *a, struct held *h, const char *event)
{
	char id[MER_AGENT_NAME_MAX + 32];
	json_t *e;

	snprintf(id, sizeof(id), "%s/%s", h->id, event);
	e = json_pack("{s:s, s:s, s:s, s:i, s:s, s:s, s:I}", "id", id, "stage",
		      h->id, "event", event, "exit_code", h->exit_code,
		      "job_id", h->job_id, "reason", "", "at",
		      (json_int_t)time(NULL));
	if (!e || json_array_append_new(a->events, e))
		return MER_ENOMEM;
	mer_info("stage event", "stage=%s event=%s job=%s exit_code=%d", h->id,
		 event, h->job_id, h->exit_code);
	return 0;
}

static void set_reason(struct mer_agent *a, const char *reason)
{
	json_t *last =
	    json_array_get(a->events, json_array_size(a->events) - 1);

	if (last && reason && *reason)
		json_object_set_new(last, "reason", json_string(reason));
}

json_t *mer_agent_events(struct mer_agent *a)
{
	return json_deep_copy(a->events);
}

int mer_agent_ack_events(struct mer_agent *a, const json_t *ids)
{
	size_t i, j;
	json_t *id;
	int changed = 0;

	json_array_foreach (ids, j, id) {
		for (i = 0; i < json_array_size(a->events); i++) {
			const char *e = json_string_value(json_object_get(
			    json_array_get(a->events, i), "id"));
			if (e && json_is_string(id) &&
			    strcmp(e, json_string_value(id)) == 0) {
				json_array_remove(a->events, i);
				changed = 1;
				break;
			}
		}
	}
	return changed ? save_state(a) : 0;
}

/* ------------------------------------------------------------ life */

/* One agent per state file: a second one would submit and save behind
 * the first one's back. The lock is on a sibling file because the state
 * file itself is replaced by rename on every save. */
static int lock_state(struct mer_agent *a, char *err, size_t errlen)
{
	const char *path = a->cfg->state_file;
	char lock[4096];

	if (!path || !*path)
		return 0;
	if (snprintf(lock, sizeof(lock), "%s.lock", path) >= (int)sizeof(lock))
		return MER_EINVAL;
	a->lock_fd = open(lock, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
	if (a->lock_fd < 0) {
		snprintf(err, errlen, "%s: %s", lock, strerror(errno));
		return MER_EIO;
	}
	if (flock(a->lock_fd, LOCK_EX | LOCK_NB) != 0) {
		snprintf(err, errlen,
			 "%s: another meridian-agent is using this state "
			 "file",
			 path);
		return errno == EWOULDBLOCK ? MER_EBUSY : MER_EIO;
	}
	return 0;
}

static int open_agent(const struct mer_agent_cfg *cfg,
		      const struct adapter_ops *ops, int readonly,
		      struct mer_agent **out, char *err, size_t errlen)
{
	struct mer_agent *a = calloc(1, sizeof(*a));
	int rv = MER_ENOMEM;

	*out = NULL;
	if (!a)
		return MER_ENOMEM;
	a->cfg = cfg;
	a->ops = ops;
	a->readonly = readonly;
	a->lock_fd = -1;
	if (!(a->cap = calloc(1, sizeof(*a->cap))) ||
	    !(a->events = json_array()))
		goto fail_close_agent;
	if (!readonly && (rv = lock_state(a, err, errlen)))
		goto fail_close_agent;
	if ((rv = ops->open(cfg, &a->inst, err, errlen)))
		goto fail_close_agent;
	/* Read-only: the stages only count in federation_used. */
	if ((rv = load_state(a, err, errlen)))
		goto fail_close_agent;
	/* A scheduler that is down now is not fatal: stages are reconciled
	 * once it answers. */
	if (a->nh && !readonly) {
		/* Probe first: adapters place resubmitted stages with what a
		 * probe learnt (Kubernetes node labels, GPU products). */
		mer_agent_probe(a);
		mer_agent_reconcile(a);
	}
	*out = a;
	return 0;
fail_close_agent:
	mer_agent_close(a);
	return rv;
}

int mer_agent_open_with(const struct mer_agent_cfg *cfg,
			const struct adapter_ops *ops, struct mer_agent **out,
			char *err, size_t errlen)
{
	return open_agent(cfg, ops, 0, out, err, errlen);
}

int mer_agent_open_readonly(const struct mer_agent_cfg *cfg,
			    struct mer_agent **out, char *err, size_t errlen)
{
	const struct adapter_ops *ops =
	    mer_agent_adapter_find(mer_agent_sched_name(cfg->kind));

	if (!ops) {
		snprintf(err, errlen, "no adapter for scheduler kind %s",
			 mer_agent_sched_name(cfg->kind));
		return MER_EUNSUPPORTED;
	}
	return open_agent(cfg, ops, 1, out, err, errlen);
}

int mer_agent_open(const struct mer_agent_cfg *cfg, struct mer_agent **out,
		   char *err, size_t errlen)
{
	const struct adapter_ops *ops =
	    mer_agent_adapter_find(mer_agent_sched_name(cfg->kind));

	if (!ops) {
		snprintf(err, errlen, "no adapter for scheduler kind %s",
			 mer_agent_sched_name(cfg->kind));
		return MER_EUNSUPPORTED;
	}
	return mer_agent_open_with(cfg, ops, out, err, errlen);
}

void mer_agent_close(struct mer_agent *a)
{
	if (!a)
		return;
	if (a->inst)
		a->ops->close(a->inst);
	for (size_t i = 0; i < a->nh; i++)
		held_clear(&a->h[i]);
	free(a->h);
	free(a->cap);
	json_decref(a->events);
	if (a->lock_fd >= 0)
		close(a->lock_fd); /* drops the flock */
	free(a);
}

/* ------------------------------------------------------------ probing */

static void mark_down(struct mer_agent *a, int rv, const char *why)
{
	long long max = a->cfg->retry_max_ms > 0 ? a->cfg->retry_max_ms : 60000;

	if (!a->unhealthy[0])
		mer_warn("scheduler unreachable or failing", "kind=%s error=%s",
			 mer_agent_sched_name(a->cfg->kind), why);
	snprintf(a->unhealthy, sizeof(a->unhealthy), "%s: %s", mer_errname(rv),
		 why);
	a->backoff_ms = a->backoff_ms ? a->backoff_ms * 2 : BACKOFF_MIN_MS;
	if (a->backoff_ms > max)
		a->backoff_ms = max;
	a->next_probe_ms = mono_ms() + a->backoff_ms;
}

static void mark_up(struct mer_agent *a)
{
	if (a->unhealthy[0])
		mer_info("scheduler reachable again", "kind=%s",
			 mer_agent_sched_name(a->cfg->kind));
	a->unhealthy[0] = '\0';
	a->backoff_ms = 0;
	a->next_probe_ms = 0;
}

int mer_agent_probe(struct mer_agent *a)
{
	struct mer_agent_capacity *cap;
	char err[512] = "";
	int rv, was_down = a->unhealthy[0] != '\0';

	if (a->next_probe_ms && mono_ms() < a->next_probe_ms)
		return MER_EBUSY;
	if (!(cap = calloc(1, sizeof(*cap))))
		return MER_ENOMEM;
	rv = a->ops->probe(a->inst, cap, err, sizeof(err));
	if (rv) {
		/* Malformed replies land here too: logged, survived. */
		mark_down(a, rv, err[0] ? err : mer_strerror(rv));
		free(cap);
		return rv;
	}
	free(a->cap);
	a->cap = cap;
	a->have_cap = 1;
	mark_up(a);
	if (was_down && a->nh && !a->readonly)
		mer_agent_reconcile(a);
	return 0;
}

void mer_agent_probe_now(struct mer_agent *a)
{
	a->next_probe_ms = 0;
}

const char *mer_agent_unhealthy_reason(const struct mer_agent *a)
{
	return a->unhealthy;
}

/* What running federation stages hold, per pool and kind (queued ones are
 * in the scheduler's pending, counting them here too would report more
 * in use than the pool has). */
static void fed_used(struct mer_agent *a, struct mer_agent_capacity *used)
{
	memset(used, 0, sizeof(*used));
	for (size_t i = 0; i < a->nh; i++) {
		struct held *h = &a->h[i];
		const char *pool = h->st.pool;
		struct mer_agent_pool *p;
		struct mer_agent_res *r;
		double reps = h->st.replicas > 0 ? (double)h->st.replicas : 1;

		/* Only what runs: a stage still queued at the scheduler
		 * shows in the pool's pending already. */
		if (h->state != MER_AGENT_STAGE_RUNNING || !h->spec)
			continue;
		if (!*pool && a->have_cap && a->cap->npools)
			pool = a->cap->pools[0].name;
		if (!*pool || !(p = mer_agent_cap_pool(used, pool)))
			continue;
		if ((r = mer_agent_pool_res(p, "cpu")))
			r->total +=
			    (h->st.cpus > 0 ? (double)h->st.cpus : 1) * reps;
		if (h->st.memory_mb > 0 &&
		    (r = mer_agent_pool_res(p, "memory_mb")))
			r->total += (double)h->st.memory_mb * reps;
		if (h->st.gpus > 0 && h->st.gpu_model[0]) {
			char kind[MER_AGENT_NAME_MAX + 8];
			snprintf(kind, sizeof(kind), "gpu:%s", h->st.gpu_model);
			if ((r = mer_agent_pool_res(p, kind)))
				r->total += (double)h->st.gpus * reps;
		}
	}
}

int mer_agent_summary(struct mer_agent *a, json_t **out)
{
	struct mer_agent_capacity *used = malloc(sizeof(*used));
	struct mer_agent_summary_in in = {0};
	int rv;

	if (!used)
		return MER_ENOMEM;
	fed_used(a, used);
	in.cap = a->have_cap ? a->cap : NULL;
	in.unhealthy_reason =
	    a->have_cap || a->unhealthy[0] ? a->unhealthy : "not probed yet";
	in.fed_used = used;
	rv = mer_agent_summary_build(a->cfg, &in, out);
	free(used);
	return rv;
}

/* ------------------------------------------------------------ stages */

static int submit_held(struct mer_agent *a, struct held *h, char *err,
		       size_t errlen)
{
	char job[MER_AGENT_NAME_MAX], ferr[256];
	int rv;

	/* The job may exist already: a crash after submit and before the
	 * save, or a state file lost. Adopt it rather than run twice. */
	int adopted = 0;

	rv = a->ops->find(a->inst, h->id, job, sizeof(job), ferr, sizeof(ferr));
	if (rv == 0) {
		adopted = 1;
	} else if (rv == MER_ENOTFOUND) {
		rv = a->ops->submit(a->inst, &h->st, job, sizeof(job), err,
				    errlen);
		if (rv == MER_EEXIST) {
			rv = a->ops->find(a->inst, h->id, job, sizeof(job), err,
					  errlen);
			adopted = 1;
		}
	} else {
		snprintf(err, errlen, "%s", ferr);
	}
	if (rv)
		return rv;
	snprintf(h->job_id, sizeof(h->job_id), "%s", job);
	h->submitting = 0;
	h->state = MER_AGENT_STAGE_PENDING;
	if (adopted)
		mer_info("stage found at the scheduler", "stage=%s job=%s",
			 h->id, job);
	else
		mer_info("stage submitted", "stage=%s job=%s", h->id, job);
	return 0;
}

static int launch_json(struct mer_agent *a, const json_t *spec, int *already,
		       char *err, size_t errlen)
{
	const char *id = json_string_value(json_object_get(spec, "id"));
	struct held *h;
	int rv;

	*already = 0;
	if (a->readonly) {
		snprintf(err, errlen, "the agent is open read-only");
		return MER_ESTATE;
	}
	if (!json_is_object(spec)) {
		snprintf(err, errlen, "stage: must be an object");
		return MER_EINVAL;
	}
	if (id && (h = held_find(a, id))) {
		/* A repeat of a launch: never a second job. A stage that
		 * has ended says so; a new attempt has a new stage id. */
		*already = mer_agent_stage_state_final(h->state) ? 2 : 1;
		return 0;
	}
	if (!(h = held_add(a, id ? id : "", spec, err, errlen)))
		return err[0] ? MER_EINVAL : MER_ENOMEM;
	h->submitting = 1;
	/* Saved before the submit: a crash in between leaves a trace that
	 * reconcile follows up (find, or submit again). */
	if ((rv = save_state(a))) {
		held_remove(a, h);
		snprintf(err, errlen, "cannot write the state file");
		return rv;
	}
	if ((rv = submit_held(a, h, err, errlen))) {
		mer_warn("stage launch failed", "stage=%s error=%s", h->id,
			 err);
		if (rv == MER_EUNREACHABLE || rv == MER_ETIMEDOUT)
			mark_down(a, rv, err);
		held_remove(a, h);
		save_state(a);
		return rv;
	}
	return save_state(a);
}

static json_t *stage_to_json(const struct mer_agent_stage *st)
{
	json_t *j = json_pack(
	    "{s:s, s:s, s:I, s:I, s:I, s:I, s:b, s:I, s:f, "
	    "s:i}",
	    "id", st->id, "command", st->command ? st->command : "", "cpus",
	    (json_int_t)st->cpus, "memory_mb", (json_int_t)st->memory_mb,
	    "gpus", (json_int_t)st->gpus, "replicas", (json_int_t)st->replicas,
	    "gang", st->gang, "time_limit_s", (json_int_t)st->time_limit_s,
	    "duration_s", st->duration_s, "exit_code", st->exit_code);
	if (!j)
		return NULL;
	if (st->pool[0])
		json_object_set_new(j, "pool", json_string(st->pool));
	if (st->gpu_model[0])
		json_object_set_new(j, "gpu_model", json_string(st->gpu_model));
	if (st->image)
		json_object_set_new(j, "image", json_string(st->image));
	if (st->output)
		json_object_set_new(j, "output", json_string(st->output));
	if (st->workdir)
		json_object_set_new(j, "workdir", json_string(st->workdir));
	return j;
}

int mer_agent_launch(struct mer_agent *a, const struct mer_agent_stage *st,
		     int *already, char *err, size_t errlen)
{
	json_t *spec = stage_to_json(st);
	int rv;

	if (!spec)
		return MER_ENOMEM;
	rv = launch_json(a, spec, already, err, errlen);
	json_decref(spec);
	return rv;
}

int mer_agent_cancel(struct mer_agent *a, const char *stage_id, char *err,
		     size_t errlen)
{
	struct held *h = held_find(a, stage_id);
	int rv;

	if (!h) {
		snprintf(err, errlen, "no stage %s here", stage_id);
		return MER_ENOTFOUND;
	}
	if (a->readonly) {
		snprintf(err, errlen, "the agent is open read-only");
		return MER_ESTATE;
	}
	if (mer_agent_stage_state_final(h->state))
		return 0;
	h->cancel = 1;
	if ((rv = save_state(a)))
		return rv;
	if (h->submitting)
		return 0; /* reconcile cancels it once the job is known */
	rv = a->ops->cancel(a->inst, h->job_id, err, errlen);
	if (rv)
		mer_warn("stage cancel failed", "stage=%s job=%s error=%s",
			 h->id, h->job_id, err);
	return rv;
}

static int finish(struct mer_agent *a, struct held *h,
		  enum mer_agent_stage_state s, int exit_code,
		  const char *reason)
{
	static const char *const ev[] = {
	    [MER_AGENT_STAGE_SUCCEEDED] = "finished",
	    [MER_AGENT_STAGE_FAILED] = "failed",
	    [MER_AGENT_STAGE_CANCELLED] = "cancelled",
	    [MER_AGENT_STAGE_LOST] = "lost",
	};
	int rv;

	/* A job killed on our request ends "cancelled" whatever the
	 * scheduler calls it (Kubernetes just deletes it). */
	if (h->cancel && s != MER_AGENT_STAGE_SUCCEEDED)
		s = MER_AGENT_STAGE_CANCELLED;
	h->state = s;
	h->exit_code = s == MER_AGENT_STAGE_SUCCEEDED ? 0 : exit_code;
	h->ended_at = (long long)time(NULL);
	if ((rv = add_event(a, h, ev[s])))
		return rv;
	set_reason(a, reason);
	return 0;
}

/* One stage: its status, and the event for a change. 1 when an event was
 * added, 0 when none, < 0 as -code. */
static int follow(struct mer_agent *a, struct held *h, int *dirty)
{
	struct mer_agent_stage_status s;
	char err[512] = "", job[MER_AGENT_NAME_MAX];
	int rv;

	if (mer_agent_stage_state_final(h->state))
		return 0;
	if (h->submitting) {
		/* A launch cut short by a restart. */
		if ((rv = submit_held(a, h, err, sizeof(err))))
			return -rv;
		*dirty = 1; /* the job id must reach the state file */
		if (h->cancel)
			a->ops->cancel(a->inst, h->job_id, err, sizeof(err));
		return 0;
	}
	rv = a->ops->status(a->inst, h->job_id, &s, err, sizeof(err));
	if (rv == MER_ENOTFOUND) {
		if (h->cancel) {
			int r = finish(a, h, MER_AGENT_STAGE_CANCELLED, -1,
				       "deleted");
			return r ? -r : 1;
		}
		/* Purged, or resubmitted under another id by a previous
		 * life of this agent: look for it by stage id. */
		rv = a->ops->find(a->inst, h->id, job, sizeof(job), err,
				  sizeof(err));
		if (rv == 0 && strcmp(job, h->job_id) != 0) {
			snprintf(h->job_id, sizeof(h->job_id), "%s", job);
			*dirty = 1;
			return 0;
		}
		if (rv == 0 || rv == MER_ENOTFOUND) {
			int r = finish(a, h, MER_AGENT_STAGE_LOST, -1,
				       "the scheduler no longer knows the job");
			return r ? -r : 1;
		}
	}
	if (rv) {
		mer_warn("stage status failed", "stage=%s job=%s error=%s",
			 h->id, h->job_id, err);
		return -rv;
	}
	if (s.state == h->state)
		return 0;
	if (mer_agent_stage_state_final(s.state)) {
		/* A stage that ended between two looks also started. */
		if (h->state == MER_AGENT_STAGE_PENDING &&
		    s.state != MER_AGENT_STAGE_CANCELLED &&
		    s.state != MER_AGENT_STAGE_LOST) {
			h->state = MER_AGENT_STAGE_RUNNING;
			if ((rv = add_event(a, h, "started")))
				return -rv;
		}
		rv = finish(a, h, s.state, s.exit_code, s.reason);
		return rv ? -rv : 1;
	}
	if (s.state == MER_AGENT_STAGE_RUNNING &&
	    h->state == MER_AGENT_STAGE_PENDING) {
		h->state = MER_AGENT_STAGE_RUNNING;
		if ((rv = add_event(a, h, "started")))
			return -rv;
		return 1;
	}
	if (h->state != s.state)
		*dirty = 1;
	h->state = s.state;
	return 0;
}

int mer_agent_tick(struct mer_agent *a)
{
	int n = 0, rv;
	long long now = (long long)time(NULL);
	int changed = 0;

	if (a->readonly || (a->unhealthy[0] && a->next_probe_ms &&
			    mono_ms() < a->next_probe_ms))
		return 0;
	for (size_t i = 0; i < a->nh; i++) {
		int dirty = 0;
		rv = follow(a, &a->h[i], &dirty);
		if (dirty)
			changed = 1;
		if (rv == -MER_EUNREACHABLE || rv == -MER_ETIMEDOUT) {
			mark_down(a, -rv,
				  "scheduler unreachable while "
				  "following stages");
			break;
		}
		if (rv > 0)
			n += rv;
		if (rv != 0)
			changed = 1;
	}
	/* Forget stages finished long ago whose events were delivered. */
	for (size_t i = 0; i < a->nh;) {
		struct held *h = &a->h[i];
		if (mer_agent_stage_state_final(h->state) &&
		    now - h->ended_at > KEEP_FINISHED_S) {
			held_remove(a, h);
			changed = 1;
			continue;
		}
		i++;
	}
	if (changed && (rv = save_state(a)))
		return -rv;
	return n;
}

int mer_agent_reconcile(struct mer_agent *a)
{
	int rv = mer_agent_tick(a);

	return rv < 0 ? -rv : 0;
}

int mer_agent_stage_get(struct mer_agent *a, const char *stage_id,
			enum mer_agent_stage_state *state, int *exit_code,
			char *job_id, size_t n)
{
	struct held *h = held_find(a, stage_id);

	if (!h)
		return MER_ENOTFOUND;
	if (state)
		*state = h->state;
	if (exit_code)
		*exit_code = h->exit_code;
	if (job_id)
		snprintf(job_id, n, "%s", h->job_id);
	return 0;
}

size_t mer_agent_stage_count(const struct mer_agent *a)
{
	return a->nh;
}

/* ------------------------------------------------------------ commands */

int mer_agent_command(struct mer_agent *a, const json_t *cmd, json_t **reply)
{
	const char *id = json_string_value(json_object_get(cmd, "id"));
	const char *type = json_string_value(json_object_get(cmd, "type"));
	const char *result = NULL;
	struct held *held = NULL;
	char err[512] = "";
	int rv = 0, already = 0;

	*reply = NULL;
	const json_t *ej = json_object_get(cmd, "epoch");
	int64_t epoch = json_is_integer(ej) ? json_integer_value(ej) : 0;
	if (epoch && epoch < a->epoch) {
		/* A deposed leader's command (PROTOCOL.md: epochs). */
		rv = MER_ENOTLEADER;
		snprintf(err, sizeof(err),
			 "command from leader epoch %lld, older than %lld",
			 (long long)epoch, (long long)a->epoch);
		mer_warn("command refused: older leader epoch",
			 "command=%s epoch=%lld seen=%lld", id ? id : "?",
			 (long long)epoch, (long long)a->epoch);
	} else if (epoch > a->epoch) {
		/* Saved before the command runs, so a restart still
		 * refuses the older leader. */
		int64_t old = a->epoch;
		a->epoch = epoch;
		if (save_state(a) != 0) {
			a->epoch = old;
			rv = MER_EIO;
			snprintf(err, sizeof(err),
				 "cannot save the state file");
		}
	}
	if (rv) {
		/* refused above */
	} else if (!type) {
		rv = MER_EINVAL;
		snprintf(err, sizeof(err), "command without a type");
	} else if (strcmp(type, "launch") == 0) {
		rv = launch_json(a, json_object_get(cmd, "stage"), &already,
				 err, sizeof(err));
		result = already == 2	? "already_finished"
			 : already == 1 ? "already_running"
					: "launched";
		if (already)
			held = held_find(
			    a, json_string_value(json_object_get(
				   json_object_get(cmd, "stage"), "id")));
	} else if (strcmp(type, "cancel") == 0) {
		const char *sid =
		    json_string_value(json_object_get(cmd, "stage_id"));
		rv = sid ? mer_agent_cancel(a, sid, err, sizeof(err))
			 : MER_EINVAL;
		if (!sid)
			snprintf(err, sizeof(err), "cancel without stage_id");
		result = "cancelling";
	} else {
		rv = MER_EUNSUPPORTED;
		snprintf(err, sizeof(err),
			 "command type %s not supported by "
			 "this agent",
			 type);
	}
	*reply = json_pack("{s:s?, s:s?, s:b}", "command", id, "type", type,
			   "ok", rv == 0);
	if (!*reply)
		return MER_ENOMEM;
	if (rv == 0)
		json_object_set_new(*reply, "result", json_string(result));
	if (rv == 0 && held) {
		/* The stage's real state, so the broker need not guess. */
		json_object_set_new(
		    *reply, "state",
		    json_string(mer_agent_stage_state_name(held->state)));
		json_object_set_new(*reply, "exit_code",
				    json_integer(held->exit_code));
		json_object_set_new(*reply, "job_id",
				    json_string(held->job_id));
	} else
		json_object_set_new(*reply, "error",
				    json_pack("{s:s, s:s}", "code",
					      mer_errname(rv), "message", err));
	/* Failures travel in the reply; the state is saved by then. */
	return 0;
}
