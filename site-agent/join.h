/*
 * The agent's side of joining the federation ("meridian-agent join"): make
 * a new site key, pin the broker key, present the token, and explain
 * a refusal in one line. The command-line wiring is the agent's main.
 */
#ifndef MERIDIAN_AGENT_JOIN_H
#define MERIDIAN_AGENT_JOIN_H

#include <stddef.h>

#include "common/keys.h"
#include "common/link.h"

struct mer_agent_join_opts {
	const char *broker_url; /* "tcp://broker:7400" */
	const char *token;	/* "<id>.<secret>"; never logged */
	const char *broker_fp;	/* "SHA256:..." pinned broker key */
	/* Site key file, written 0600 with a new key after a successful
	 * join. If it exists, the join is refused (MER_EEXIST) unless
	 * rotate is set: then the new key atomically replaces it. */
	const char *key_path;
	int rotate;
	int timeout_ms; /* per exchange; 0 = 10000 */
};

struct mer_agent_join_result {
	char site[MER_LINK_NAME_MAX];
	char region[MER_LINK_NAME_MAX];
	char fingerprint[MER_KEY_FP_SIZE]; /* of this site's key */
	int key_created;		   /* 1 on success: always a new key */
};

/*
 * Joins. 0 on success; otherwise an err.h code (MER_EPARSE, MER_ENOTFOUND,
 * MER_EEXPIRED, MER_EUSED, MER_EEXIST (the site joined already, or the key
 * file exists and rotate is not set), MER_ESTATE (the key joined before),
 * MER_EAUTH, MER_EUNREACHABLE / MER_ETIMEDOUT ...) and err gets one
 * line for people ("join refused: the token has expired (expired)").
 */
int mer_agent_join(const struct mer_agent_join_opts *o,
		   struct mer_agent_join_result *r, char *err, size_t errlen);

#endif
