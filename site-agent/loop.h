/*
 * The agent's link loop: report the summary every interval and on change,
 * hold a long-poll for commands, run them through the runner, and send
 * stage events until the broker acknowledges them. One thread per agent;
 * the CLI runs one, the scale test runs hundreds in one process.
 */
#ifndef MERIDIAN_AGENT_LOOP_H
#define MERIDIAN_AGENT_LOOP_H

#include <stdatomic.h>

#include "common/keys.h"
#include "site-agent/config.h"

struct mer_agent_loop_opts {
	const struct mer_agent_cfg *cfg;
	const char *broker_url; /* NULL: cfg->broker_url */
	const char *broker_fp;	/* NULL: cfg->broker_key */
	const struct mer_keypair *key;
	atomic_int *stop; /* the loop returns soon after *stop != 0 */
	int poll_wait_ms; /* long-poll wait; 0 = min(poll, report interval) */
};

/* Runs until *stop. 0 on a requested stop; MER_EREVOKED when the broker
 * revoked the site; setup errors otherwise (err says which). */
int mer_agent_loop_run(const struct mer_agent_loop_opts *o, char *err,
		       size_t errlen);

#endif
