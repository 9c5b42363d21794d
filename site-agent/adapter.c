/*
 * The adapter registry (one line per scheduler) and the small helpers every
 * adapter uses to fill normalized capacity. No scheduler-specific code.
 */
#include "site-agent/adapter.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static const struct adapter_ops *const registry[] = {
    &mer_agent_slurm_ops,
    &mer_agent_k8s_ops,
    &mer_agent_yarn_ops,
    &mer_agent_sim_ops,
};

#define NREG (sizeof(registry) / sizeof(registry[0]))

/* The kinds, taken from the registry so a scheduler is added in one
 * place. Filled once (pthread_once): --help may run from any thread. */
static const char *kinds[NREG + 1];
static pthread_once_t kinds_once = PTHREAD_ONCE_INIT;

static void kinds_fill(void)
{
	for (size_t i = 0; i < NREG; i++)
		kinds[i] = registry[i]->kind;
	kinds[NREG] = NULL;
}

const struct adapter_ops *mer_agent_adapter_find(const char *kind)
{
	for (size_t i = 0; i < NREG; i++) {
		if (kind && strcmp(registry[i]->kind, kind) == 0)
			return registry[i];
	}
	return NULL;
}

const char *const *mer_agent_adapter_kinds(void)
{
	pthread_once(&kinds_once, kinds_fill);
	return kinds;
}

struct mer_agent_pool *mer_agent_cap_pool(struct mer_agent_capacity *cap,
					  const char *name)
{
	for (size_t i = 0; i < cap->npools; i++) {
		if (strcmp(cap->pools[i].name, name) == 0)
			return &cap->pools[i];
	}
	if (cap->npools >= MER_AGENT_MAX_POOLS ||
	    strlen(name) >= sizeof(cap->pools[0].name))
		return NULL;
	struct mer_agent_pool *p = &cap->pools[cap->npools++];
	memset(p, 0, sizeof(*p));
	snprintf(p->name, sizeof(p->name), "%s", name);
	return p;
}

struct mer_agent_res *mer_agent_pool_res(struct mer_agent_pool *pool,
					 const char *kind)
{
	for (size_t i = 0; i < pool->nres; i++) {
		if (strcmp(pool->res[i].kind, kind) == 0)
			return &pool->res[i];
	}
	if (pool->nres >= MER_AGENT_MAX_KINDS ||
	    strlen(kind) >= sizeof(pool->res[0].kind))
		return NULL;
	struct mer_agent_res *r = &pool->res[pool->nres++];
	memset(r, 0, sizeof(*r));
	snprintf(r->kind, sizeof(r->kind), "%s", kind);
	return r;
}

const struct mer_agent_res *
mer_agent_pool_find(const struct mer_agent_pool *pool, const char *kind)
{
	for (size_t i = 0; i < pool->nres; i++) {
		if (strcmp(pool->res[i].kind, kind) == 0)
			return &pool->res[i];
	}
	return NULL;
}

void mer_agent_stage_clear(struct mer_agent_stage *s)
{
	if (!s)
		return;
	free(s->command);
	free(s->image);
	free(s->output);
	free(s->workdir);
	memset(s, 0, sizeof(*s));
}

const char *mer_agent_stage_state_name(enum mer_agent_stage_state s)
{
	switch (s) {
	case MER_AGENT_STAGE_PENDING:
		return "pending";
	case MER_AGENT_STAGE_RUNNING:
		return "running";
	case MER_AGENT_STAGE_SUCCEEDED:
		return "succeeded";
	case MER_AGENT_STAGE_FAILED:
		return "failed";
	case MER_AGENT_STAGE_CANCELLED:
		return "cancelled";
	case MER_AGENT_STAGE_LOST:
		return "lost";
	}
	return "unknown";
}

int mer_agent_stage_state_final(enum mer_agent_stage_state s)
{
	return s == MER_AGENT_STAGE_SUCCEEDED || s == MER_AGENT_STAGE_FAILED ||
	       s == MER_AGENT_STAGE_CANCELLED || s == MER_AGENT_STAGE_LOST;
}
