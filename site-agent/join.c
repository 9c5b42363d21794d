/*
 * Agent-side join: a new key file, then mer_link_join, then a one-line
 * verdict.
 * Not the agent's config writing or its long-running link (agent main).
 */
#include "join.h"

#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/err.h"
#include "common/log.h"

static const char *why(int rv)
{
	switch (rv) {
	case MER_EPARSE:
		return "the token is malformed (want <id>.<secret>)";
	case MER_ENOTFOUND:
		return "the token is unknown";
	case MER_EEXPIRED:
		return "the token has expired";
	case MER_EUSED:
		return "the token was used already";
	case MER_EEXIST:
		return "the site has joined already (revoke it first)";
	case MER_ESTATE:
		return "this site key has joined before (each join needs a "
		       "new key)";
	case MER_EAUTH:
		return "the broker's key does not match --broker-key";
	case MER_EINVAL:
		return "bad --broker-key or broker URL";
	case MER_EUNSUPPORTED:
		return "the broker does not accept joins";
	case MER_EUNREACHABLE:
	case MER_ETIMEDOUT:
		return "cannot reach the broker";
	}
	return mer_strerror(rv);
}

int mer_agent_join(const struct mer_agent_join_opts *o,
		   struct mer_agent_join_result *r, char *err, size_t errlen)
{
	struct mer_link_client_opts lo;
	struct mer_keypair kp;
	struct stat st;
	char kerr[512] = "", tid[96], tmp[4096];
	int rv, n;

	memset(r, 0, sizeof(*r));
	if (err && errlen)
		err[0] = '\0';
	n = snprintf(tmp, sizeof(tmp), "%s.new",
		     o->key_path ? o->key_path : "");
	if (!o->key_path || !*o->key_path || n < 0 || (size_t)n >= sizeof(tmp))
		return MER_EINVAL;
	/* Every join brings a new key (a key that joined once, e.g. one
	 * since revoked, is refused for good), so an existing key file is
	 * replaced only when asked to. */
	if (!o->rotate && lstat(o->key_path, &st) == 0) {
		if (err && errlen)
			snprintf(err, errlen,
				 "join failed: key file %s exists; joining "
				 "makes a new key (rotate it, or remove the "
				 "file)",
				 o->key_path);
		return MER_EEXIST;
	}
	rv = mer_keypair_generate(&kp);
	if (rv != 0)
		return rv;
	/* The new key is on disk before the broker records it, so a crash
	 * after the join cannot lose it; a leftover from an earlier failed
	 * run is ours to replace. */
	unlink(tmp);
	rv = mer_keypair_save(tmp, &kp, kerr, sizeof(kerr));
	if (rv != 0) {
		mer_keypair_wipe(&kp);
		if (err && errlen)
			snprintf(err, errlen, "join failed: %s (%s)", kerr,
				 mer_errname(rv));
		return rv;
	}
	mer_key_fingerprint(kp.pk, r->fingerprint);
	memset(&lo, 0, sizeof(lo));
	lo.url = o->broker_url;
	lo.key = &kp;
	lo.broker_fp = o->broker_fp;
	lo.request_timeout_ms = o->timeout_ms;
	mer_redact_token(o->token, tid, sizeof(tid));
	rv = mer_link_join(&lo, o->token, r->site, r->region);
	mer_keypair_wipe(&kp);
	if (rv == 0) {
		/* Atomic: the old key (rotate) or nothing is replaced; without
		 * rotate, link() refuses a file that appeared meanwhile. */
		if (o->rotate ? rename(tmp, o->key_path)
			      : link(tmp, o->key_path)) {
			int e = errno;
			if (err && errlen)
				snprintf(err, errlen,
					 "joined, but cannot move the new key "
					 "%s to %s: %s",
					 tmp, o->key_path, strerror(e));
			mer_error("joined, but the new key was not installed",
				  "key=%s path=%s", tmp, o->key_path);
			return MER_EIO;
		}
		if (!o->rotate)
			unlink(tmp);
		r->key_created = 1;
		mer_info("joined the federation",
			 "site=%s region=%s fingerprint=%s token_id=%s",
			 r->site, r->region, r->fingerprint, tid);
		return 0;
	}
	unlink(tmp);
	if (err && errlen)
		snprintf(err, errlen, "join refused: %s (%s)", why(rv),
			 mer_errname(rv));
	mer_warn("join failed", "broker=%s token_id=%s error=%s", o->broker_url,
		 tid, mer_errname(rv));
	return rv;
}
