/*
 * Job document parser and validator: shapes, ranges, stage names, the
 * `after` DAG (unknown names, duplicates, cycles) and dataflow between
 * stages. Whether a job fits the federation is checked by the engine
 * (mer_place_check_job), not here: parsing needs no snapshot.
 */
#include "policy/job.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/err.h"
#include "policy/jv.h"

static const char *const prio_names[] = {"online", "batch", "best-effort"};
static const char *const kind_names[] = {"data-prep", "training", "inference",
					 "generic"};
static const char *const fabric_names[] = {"ib", "roce", "eth"};

const char *mer_prio_name(int prio)
{
	return prio >= 0 && prio < MER_PRIO_COUNT ? prio_names[prio] : "?";
}

const char *mer_kind_name(int kind)
{
	return kind >= 0 && kind < MER_KIND_COUNT ? kind_names[kind] : "?";
}

const char *mer_fabric_name(unsigned bit)
{
	switch (bit) {
	case MER_FABRIC_IB:
		return "ib";
	case MER_FABRIC_ROCE:
		return "roce";
	case MER_FABRIC_ETH:
		return "eth";
	}
	return "any";
}

int mer_prio_parse(const char *s, int *out)
{
	for (int i = 0; s && i < MER_PRIO_COUNT; i++) {
		if (strcmp(s, prio_names[i]) == 0) {
			*out = i;
			return 0;
		}
	}
	return MER_EINVAL;
}

int mer_fabric_parse(const char *s, unsigned *out)
{
	for (unsigned i = 0; s && i < 3; i++) {
		if (strcmp(s, fabric_names[i]) == 0) {
			*out = 1u << i;
			return 0;
		}
	}
	return MER_EINVAL;
}

void mer_job_free(struct mer_job *job)
{
	if (!job)
		return;
	struct mer_arena a = job->arena;
	mer_arena_free(&a);
}

int mer_job_stage_index(const struct mer_job *job, const char *name)
{
	for (size_t i = 0; job && name && i < job->nstages; i++) {
		if (strcmp(job->stages[i].name, name) == 0)
			return (int)i;
	}
	return -1;
}

static int check_names(struct mer_jv *v, const char *path, const char *key,
		       char **list, size_t n)
{
	char p[MER_JV_PATH_MAX], q[MER_JV_PATH_MAX];

	mer_jv_key(p, sizeof(p), path, key);
	for (size_t i = 0; i < n; i++) {
		if (!mer_jv_name_ok(list[i])) {
			mer_jv_idx(q, sizeof(q), p, i);
			return mer_jv_fail(v, q, "not a valid name");
		}
	}
	return 0;
}

static int parse_gpu(struct mer_jv *v, const json_t *res, const char *path,
		     struct mer_stage *st)
{
	static const char *const keys[] = {"count", "model", "models", NULL};
	char p[MER_JV_PATH_MAX];
	int rv;
	const json_t *g =
	    mer_jv_member(v, res, path, "gpu", JSON_OBJECT, 0, &rv);
	long long count = 0;
	const char *model = NULL;

	if (!g)
		return rv;
	mer_jv_key(p, sizeof(p), path, "gpu");
	if ((rv = mer_jv_object(v, g, p, keys)) ||
	    (rv = mer_jv_int(v, g, p, "count", 1, 1, MER_JOB_MAX_GPUS,
			     &count)) ||
	    (rv = mer_jv_str(v, g, p, "model", 0, &model)) ||
	    (rv = mer_jv_strlist(v, g, p, "models", &st->gpu_models,
				 &st->ngpu_models)))
		return rv;
	st->gpu_count = (unsigned)count;
	if (model && st->ngpu_models)
		return mer_jv_fail(v, p, "give either model or models");
	if (model) {
		st->gpu_models = mer_arena_alloc(v->arena, sizeof(char *));
		if (!st->gpu_models)
			return MER_ENOMEM;
		st->gpu_models[0] = (char *)model;
		st->ngpu_models = 1;
	}
	if (st->ngpu_models == 0) {
		char q[MER_JV_PATH_MAX];
		mer_jv_key(q, sizeof(q), p, "models");
		return mer_jv_fail(v, st->gpu_models ? q : p,
				   "needs model or a non-empty models list");
	}
	for (size_t i = 0; i < st->ngpu_models; i++) {
		char q[MER_JV_PATH_MAX], r[MER_JV_PATH_MAX];
		if (mer_jv_name_ok(st->gpu_models[i]))
			continue;
		mer_jv_key(q, sizeof(q), p, model ? "model" : "models");
		if (!model)
			mer_jv_idx(r, sizeof(r), q, i);
		return mer_jv_fail(v, model ? q : r, "not a valid model name");
	}
	return 0;
}

static int parse_resources(struct mer_jv *v, const json_t *st_json,
			   const char *path, struct mer_stage *st)
{
	static const char *const keys[] = {"cpu", "memory_mb", "gpu", "fabric",
					   NULL};
	char p[MER_JV_PATH_MAX];
	int rv;
	const json_t *res =
	    mer_jv_member(v, st_json, path, "resources", JSON_OBJECT, 1, &rv);
	const char *fabric = NULL;

	if (!res)
		return rv;
	mer_jv_key(p, sizeof(p), path, "resources");
	if ((rv = mer_jv_object(v, res, p, keys)) ||
	    (rv = mer_jv_num(v, res, p, "cpu", 0, 0, 1e7, &st->cpu)) ||
	    (rv = mer_jv_num(v, res, p, "memory_mb", 0, 0, 1e12,
			     &st->memory_mb)) ||
	    (rv = parse_gpu(v, res, p, st)) ||
	    (rv = mer_jv_str(v, res, p, "fabric", 0, &fabric)))
		return rv;
	if (fabric && mer_fabric_parse(fabric, &st->fabric)) {
		char q[MER_JV_PATH_MAX];
		mer_jv_key(q, sizeof(q), p, "fabric");
		return mer_jv_fail(v, q, "must be one of ib, roce, eth");
	}
	if (st->cpu <= 0 && st->gpu_count == 0)
		return mer_jv_fail(v, p, "must ask for cpu or gpu");
	return 0;
}

static int parse_tags(struct mer_jv *v, const json_t *obj, const char *path,
		      char ***tags, size_t *n)
{
	int rv = mer_jv_strlist(v, obj, path, "tags", tags, n);

	return rv ? rv : check_names(v, path, "tags", *tags, *n);
}

static int parse_inputs(struct mer_jv *v, const json_t *sj, const char *path,
			struct mer_stage *st)
{
	static const char *const keys[] = {"name", "bytes", "region", "tags",
					   NULL};
	char p[MER_JV_PATH_MAX], q[MER_JV_PATH_MAX];
	int rv;
	const json_t *arr =
	    mer_jv_member(v, sj, path, "inputs", JSON_ARRAY, 0, &rv);

	if (!arr)
		return rv;
	mer_jv_key(p, sizeof(p), path, "inputs");
	st->ninputs = json_array_size(arr);
	if (st->ninputs > MER_JOB_MAX_DATASETS)
		return mer_jv_fail(v, p, "at most %d inputs",
				   MER_JOB_MAX_DATASETS);
	st->inputs =
	    mer_arena_alloc(v->arena, (st->ninputs + 1) * sizeof(*st->inputs));
	if (!st->inputs)
		return MER_ENOMEM;
	for (size_t i = 0; i < st->ninputs; i++) {
		struct mer_input *in = &st->inputs[i];
		const json_t *e = json_array_get(arr, i);
		in->bytes = -1;
		in->producer = -1;
		in->output = -1;
		mer_jv_idx(q, sizeof(q), p, i);
		if ((rv = mer_jv_object(v, e, q, keys)) ||
		    (rv = mer_jv_str(v, e, q, "name", 1, &in->name)) ||
		    (rv = mer_jv_num(v, e, q, "bytes", 0, 0, 1e18,
				     &in->bytes)) ||
		    (rv = mer_jv_str(v, e, q, "region", 0, &in->region)) ||
		    (rv = parse_tags(v, e, q, &in->tags, &in->ntags)))
			return rv;
		if (!mer_jv_name_ok(in->name)) {
			char r[MER_JV_PATH_MAX];
			mer_jv_key(r, sizeof(r), q, "name");
			return mer_jv_fail(v, r, "not a valid dataset name");
		}
		if (in->region && in->bytes < 0) {
			char r[MER_JV_PATH_MAX];
			mer_jv_key(r, sizeof(r), q, "bytes");
			return mer_jv_fail(v, r, "required with region");
		}
		for (size_t j = 0; j < i; j++) {
			if (strcmp(st->inputs[j].name, in->name) == 0) {
				char r[MER_JV_PATH_MAX];
				mer_jv_key(r, sizeof(r), q, "name");
				return mer_jv_fail(
				    v, r, "duplicate input \"%s\"", in->name);
			}
		}
	}
	return 0;
}

static int parse_outputs(struct mer_jv *v, const json_t *sj, const char *path,
			 struct mer_stage *st)
{
	static const char *const keys[] = {"name", "bytes", "tags", NULL};
	char p[MER_JV_PATH_MAX], q[MER_JV_PATH_MAX];
	int rv;
	const json_t *arr =
	    mer_jv_member(v, sj, path, "outputs", JSON_ARRAY, 0, &rv);

	if (!arr)
		return rv;
	mer_jv_key(p, sizeof(p), path, "outputs");
	st->noutputs = json_array_size(arr);
	if (st->noutputs > MER_JOB_MAX_DATASETS)
		return mer_jv_fail(v, p, "at most %d outputs",
				   MER_JOB_MAX_DATASETS);
	st->outputs = mer_arena_alloc(v->arena, (st->noutputs + 1) *
						    sizeof(*st->outputs));
	if (!st->outputs)
		return MER_ENOMEM;
	for (size_t i = 0; i < st->noutputs; i++) {
		struct mer_output *o = &st->outputs[i];
		const json_t *e = json_array_get(arr, i);
		mer_jv_idx(q, sizeof(q), p, i);
		if ((rv = mer_jv_object(v, e, q, keys)) ||
		    (rv = mer_jv_str(v, e, q, "name", 1, &o->name)) ||
		    (rv =
			 mer_jv_num(v, e, q, "bytes", 1, 0, 1e18, &o->bytes)) ||
		    (rv = parse_tags(v, e, q, &o->tags, &o->ntags)))
			return rv;
		if (!mer_jv_name_ok(o->name)) {
			char r[MER_JV_PATH_MAX];
			mer_jv_key(r, sizeof(r), q, "name");
			return mer_jv_fail(v, r, "not a valid dataset name");
		}
	}
	return 0;
}

static int parse_stage(struct mer_jv *v, const json_t *sj, const char *path,
		       struct mer_stage *st)
{
	static const char *const keys[] = {
	    "name",	"kind",	   "after",	  "resources", "gang",
	    "replicas", "near",	   "inputs",	  "outputs",   "duration_s",
	    "image",	"command", "preemptible", NULL};
	int rv;
	long long replicas = 1;

	if ((rv = mer_jv_object(v, sj, path, keys)) ||
	    (rv = mer_jv_str(v, sj, path, "name", 1, &st->name)))
		return rv;
	if (!mer_jv_name_ok(st->name)) {
		char p[MER_JV_PATH_MAX];
		mer_jv_key(p, sizeof(p), path, "name");
		return mer_jv_fail(v, p,
				   "must be 1-63 characters of "
				   "A-Z a-z 0-9 . _ : / -");
	}
	st->kind = MER_KIND_GENERIC;
	if ((rv = mer_jv_enum(v, sj, path, "kind", 0, kind_names,
			      MER_KIND_COUNT, &st->kind)) ||
	    (rv = mer_jv_strlist(v, sj, path, "after", &st->after,
				 &st->nafter)) ||
	    (rv = parse_resources(v, sj, path, st)) ||
	    (rv = mer_jv_bool(v, sj, path, "gang", &st->gang)) ||
	    (rv = mer_jv_int(v, sj, path, "replicas", 0, 1,
			     MER_JOB_MAX_REPLICAS, &replicas)) ||
	    (rv = mer_jv_strlist(v, sj, path, "near", &st->near, &st->nnear)) ||
	    (rv = check_names(v, path, "near", st->near, st->nnear)) ||
	    (rv = parse_inputs(v, sj, path, st)) ||
	    (rv = parse_outputs(v, sj, path, st)) ||
	    (rv = mer_jv_num(v, sj, path, "duration_s", 0, 1, 1e9,
			     &st->duration_s)) ||
	    (rv = mer_jv_str(v, sj, path, "image", 0, &st->image)) ||
	    (rv = mer_jv_strlist(v, sj, path, "command", &st->command,
				 &st->ncommand)) ||
	    (rv = mer_jv_bool(v, sj, path, "preemptible", &st->preemptible)))
		return rv;
	st->replicas = (unsigned)replicas;
	if (st->replicas > 1 && st->kind != MER_KIND_INFERENCE) {
		char p[MER_JV_PATH_MAX];
		mer_jv_key(p, sizeof(p), path, "replicas");
		return mer_jv_fail(v, p, "only inference stages have replicas");
	}
	return 0;
}

/* Resolves after[] names to indices: unknown names, self and duplicate
 * stage names are errors. */
static int link_stages(struct mer_jv *v, struct mer_job *job)
{
	char p[MER_JV_PATH_MAX], q[MER_JV_PATH_MAX];

	for (size_t i = 0; i < job->nstages; i++) {
		struct mer_stage *st = &job->stages[i];
		for (size_t j = 0; j < i; j++) {
			if (strcmp(job->stages[j].name, st->name) == 0) {
				snprintf(p, sizeof(p), "stages[%zu].name", i);
				return mer_jv_fail(
				    v, p,
				    "duplicate stage name \"%s\" "
				    "(also stages[%zu])",
				    st->name, j);
			}
		}
	}
	for (size_t i = 0; i < job->nstages; i++) {
		struct mer_stage *st = &job->stages[i];
		st->deps = mer_arena_alloc(v->arena,
					   (st->nafter + 1) * sizeof(size_t));
		if (!st->deps)
			return MER_ENOMEM;
		snprintf(p, sizeof(p), "stages[%zu].after", i);
		for (size_t k = 0; k < st->nafter; k++) {
			int d = mer_job_stage_index(job, st->after[k]);
			mer_jv_idx(q, sizeof(q), p, k);
			if (d < 0)
				return mer_jv_fail(v, q, "unknown stage \"%s\"",
						   st->after[k]);
			if ((size_t)d == i)
				return mer_jv_fail(v, q,
						   "a stage cannot come after "
						   "itself");
			st->deps[k] = (size_t)d;
		}
	}
	return 0;
}

/* Reports one cycle among the stages Kahn's algorithm could not order. */
static int report_cycle(struct mer_jv *v, struct mer_job *job,
			const unsigned char *done)
{
	size_t n = job->nstages, cur = 0;
	char p[MER_JV_PATH_MAX], chain[512];
	size_t *seen = calloc(n, sizeof(size_t));

	if (!seen)
		return MER_ENOMEM;
	while (cur < n && done[cur])
		cur++;
	/* Every unordered stage has an unordered dependency, so walking
	 * dependencies from one of them must revisit a stage. */
	size_t step = 1;
	while (!seen[cur]) {
		seen[cur] = step++;
		const struct mer_stage *st = &job->stages[cur];
		for (size_t k = 0; k < st->nafter; k++) {
			if (!done[st->deps[k]]) {
				cur = st->deps[k];
				break;
			}
		}
	}
	size_t start = cur, o = 0;
	chain[0] = '\0';
	do {
		int w = snprintf(chain + o, sizeof(chain) - o, "%s -> ",
				 job->stages[cur].name);
		if (w < 0 || (size_t)w >= sizeof(chain) - o)
			break;
		o += (size_t)w;
		const struct mer_stage *st = &job->stages[cur];
		for (size_t k = 0; k < st->nafter; k++) {
			size_t d = st->deps[k];
			if (!done[d] && seen[d]) {
				cur = d;
				break;
			}
		}
	} while (cur != start);
	if (o < sizeof(chain))
		snprintf(chain + o, sizeof(chain) - o, "%s",
			 job->stages[start].name);
	free(seen);
	snprintf(p, sizeof(p), "stages[%zu].after", start);
	return mer_jv_fail(v, p, "cycle: %s (each needs the next)", chain);
}

static int order_stages(struct mer_jv *v, struct mer_job *job)
{
	size_t n = job->nstages, cnt = 0;
	unsigned char *done = calloc(n ? n : 1, 1);
	int rv = 0;

	job->topo = mer_arena_alloc(v->arena, (n + 1) * sizeof(size_t));
	job->anc = mer_arena_alloc(v->arena, n * n + 1);
	if (!done || !job->topo || !job->anc) {
		free(done);
		return MER_ENOMEM;
	}
	/* Kahn's algorithm, always taking the lowest ready index, so the order
	 * is stable for a given document. */
	while (cnt < n) {
		size_t pick = n;
		for (size_t i = 0; i < n && pick == n; i++) {
			if (done[i])
				continue;
			int ready = 1;
			for (size_t k = 0; k < job->stages[i].nafter; k++)
				ready &= done[job->stages[i].deps[k]];
			if (ready)
				pick = i;
		}
		if (pick == n) {
			rv = report_cycle(v, job, done);
			goto out_free_done;
		}
		done[pick] = 1;
		job->topo[cnt++] = pick;
		unsigned char *a = &job->anc[pick * n];
		for (size_t k = 0; k < job->stages[pick].nafter; k++) {
			size_t d = job->stages[pick].deps[k];
			a[d] = 1;
			for (size_t j = 0; j < n; j++)
				a[j] |= job->anc[d * n + j];
		}
	}
out_free_done:
	free(done);
	return rv;
}

/* Inputs named like another stage's output read that output; the producer
 * must come before (be an ancestor of) the reader. */
static int link_dataflow(struct mer_jv *v, struct mer_job *job)
{
	char p[MER_JV_PATH_MAX];
	size_t n = job->nstages;

	for (size_t i = 0; i < n; i++) {
		for (size_t o = 0; o < job->stages[i].noutputs; o++) {
			const char *name = job->stages[i].outputs[o].name;
			for (size_t j = 0; j <= i; j++) {
				size_t lim =
				    j == i ? o : job->stages[j].noutputs;
				for (size_t q = 0; q < lim; q++) {
					if (strcmp(
						job->stages[j].outputs[q].name,
						name))
						continue;
					snprintf(
					    p, sizeof(p),
					    "stages[%zu].outputs[%zu].name", i,
					    o);
					return mer_jv_fail(
					    v, p,
					    "duplicate output \"%s\" (also "
					    "written by stage \"%s\")",
					    name, job->stages[j].name);
				}
			}
		}
	}
	for (size_t i = 0; i < n; i++) {
		struct mer_stage *st = &job->stages[i];
		for (size_t k = 0; k < st->ninputs; k++) {
			struct mer_input *in = &st->inputs[k];
			for (size_t j = 0; j < n && in->producer < 0; j++) {
				for (size_t o = 0; o < job->stages[j].noutputs;
				     o++) {
					if (strcmp(
						job->stages[j].outputs[o].name,
						in->name) == 0) {
						in->producer = (int)j;
						in->output = (int)o;
						break;
					}
				}
			}
			if (in->producer < 0)
				continue;
			snprintf(p, sizeof(p), "stages[%zu].inputs[%zu].name",
				 i, k);
			if (!job->anc[i * n + (size_t)in->producer])
				return mer_jv_fail(
				    v, p,
				    "\"%s\" is an output of stage \"%s\", "
				    "which must be in this stage's after "
				    "chain",
				    in->name, job->stages[in->producer].name);
			if (in->region)
				return mer_jv_fail(v, p,
						   "\"%s\" is a stage output; "
						   "it has no region",
						   in->name);
		}
	}
	return 0;
}

static int parse_constraints(struct mer_jv *v, const json_t *root,
			     struct mer_job *job)
{
	static const char *const keys[] = {"regions", "sites", "budget_usd",
					   "deadline", NULL};
	static const char *const ad[] = {"allow", "deny", NULL};
	int rv;
	const json_t *c =
	    mer_jv_member(v, root, "", "constraints", JSON_OBJECT, 0, &rv);
	const json_t *m;

	if (!c)
		return rv;
	if ((rv = mer_jv_object(v, c, "constraints", keys)) ||
	    (rv = mer_jv_num(v, c, "constraints", "budget_usd", 0, 0, 1e12,
			     &job->budget_usd)) ||
	    (rv = mer_jv_int(v, c, "constraints", "deadline", 0, 1, (1LL << 40),
			     &job->deadline)))
		return rv;
	m = mer_jv_member(v, c, "constraints", "regions", JSON_OBJECT, 0, &rv);
	if (rv)
		return rv;
	if (m &&
	    ((rv = mer_jv_object(v, m, "constraints.regions", ad)) ||
	     (rv = mer_jv_strlist(v, m, "constraints.regions", "allow",
				  &job->regions_allow, &job->nregions_allow)) ||
	     (rv = mer_jv_strlist(v, m, "constraints.regions", "deny",
				  &job->regions_deny, &job->nregions_deny))))
		return rv;
	m = mer_jv_member(v, c, "constraints", "sites", JSON_OBJECT, 0, &rv);
	if (rv)
		return rv;
	if (m &&
	    ((rv = mer_jv_object(v, m, "constraints.sites", ad)) ||
	     (rv = mer_jv_strlist(v, m, "constraints.sites", "allow",
				  &job->sites_allow, &job->nsites_allow)) ||
	     (rv = mer_jv_strlist(v, m, "constraints.sites", "deny",
				  &job->sites_deny, &job->nsites_deny))))
		return rv;
	if (m && json_object_get(m, "allow") && job->nsites_allow == 0)
		return mer_jv_fail(v, "constraints.sites.allow",
				   "must not be empty (omit it to allow all)");
	if (c && json_object_get(c, "regions") &&
	    json_object_get(json_object_get(c, "regions"), "allow") &&
	    job->nregions_allow == 0)
		return mer_jv_fail(v, "constraints.regions.allow",
				   "must not be empty (omit it to allow all)");
	return 0;
}

int mer_job_from_json(const json_t *root, const struct mer_json_doc *doc,
		      struct mer_job **out, char *err, size_t errlen)
{
	static const char *const keys[] = {
	    "id",	   "tenant", "name",	    "priority",
	    "constraints", "stages", "description", NULL};
	struct mer_arena arena = {0};
	struct mer_jv v = {doc, &arena, err, errlen};
	struct mer_job *job;
	const char *desc = NULL;
	const json_t *stages;
	int rv;

	*out = NULL;
	if (err && errlen)
		err[0] = '\0';
	job = mer_arena_alloc(&arena, sizeof(*job));
	if (!job)
		return MER_ENOMEM;
	job->budget_usd = -1;
	job->priority = MER_PRIO_BATCH;
	if ((rv = mer_jv_object(&v, root, "", keys)) ||
	    (rv = mer_jv_str(&v, root, "", "id", 0, &job->id)) ||
	    (rv = mer_jv_str(&v, root, "", "tenant", 0, &job->tenant)) ||
	    (rv = mer_jv_str(&v, root, "", "name", 1, &job->name)) ||
	    (rv = mer_jv_str(&v, root, "", "description", 0, &desc)) ||
	    (rv = mer_jv_enum(&v, root, "", "priority", 0, prio_names,
			      MER_PRIO_COUNT, &job->priority)) ||
	    (rv = parse_constraints(&v, root, job)))
		goto out_fail;
	if (!mer_jv_name_ok(job->name)) {
		rv = mer_jv_fail(&v, "name",
				 "must be 1-63 characters of "
				 "A-Z a-z 0-9 . _ : / -");
		goto out_fail;
	}
	if (job->tenant && !mer_jv_name_ok(job->tenant)) {
		rv = mer_jv_fail(&v, "tenant", "not a valid tenant name");
		goto out_fail;
	}
	if (!job->tenant)
		job->tenant = "default";
	stages = mer_jv_member(&v, root, "", "stages", JSON_ARRAY, 1, &rv);
	if (!stages)
		goto out_fail;
	job->nstages = json_array_size(stages);
	if (job->nstages == 0 || job->nstages > MER_JOB_MAX_STAGES) {
		rv = mer_jv_fail(&v, "stages", "must have 1 to %d stages",
				 MER_JOB_MAX_STAGES);
		goto out_fail;
	}
	job->stages =
	    mer_arena_alloc(&arena, job->nstages * sizeof(*job->stages));
	if (!job->stages) {
		rv = MER_ENOMEM;
		goto out_fail;
	}
	for (size_t i = 0; i < job->nstages; i++) {
		char p[MER_JV_PATH_MAX];
		snprintf(p, sizeof(p), "stages[%zu]", i);
		rv = parse_stage(&v, json_array_get(stages, i), p,
				 &job->stages[i]);
		if (rv)
			goto out_fail;
	}
	if ((rv = link_stages(&v, job)) || (rv = order_stages(&v, job)) ||
	    (rv = link_dataflow(&v, job)))
		goto out_fail;
	job->arena = arena;
	*out = job;
	return 0;
out_fail:
	return mer_jv_abandon(&arena, rv, err, errlen);
}

static int build_job(const json_t *root, const struct mer_json_doc *doc,
		     void *out, char *err, size_t errlen)
{
	return mer_job_from_json(root, doc, out, err, errlen);
}

int mer_job_parse(const char *name, const char *text, size_t len,
		  struct mer_job **out, char *err, size_t errlen)
{
	*out = NULL;
	return mer_jv_parse_doc(name, text, len, build_job, out, err, errlen);
}

int mer_job_load(const char *path, struct mer_job **out, char *err,
		 size_t errlen)
{
	*out = NULL;
	return mer_jv_load_doc(path, build_job, out, err, errlen);
}
