/*
 * Join tokens "<id>.<secret>" (docs/PROTOCOL.md §11): generation, parsing
 * and the hash that is all the broker stores. Pure; where tokens are kept
 * (etcd) and their expiry and single use are broker/membership.c.
 */
#ifndef MERIDIAN_TOKEN_H
#define MERIDIAN_TOKEN_H

#include <stddef.h>
#include <stdint.h>

#include "keys.h" /* MER_WUR */

#define MER_TOKEN_ID_LEN 8
#define MER_TOKEN_SECRET_LEN 32 /* 32 base32 characters: 160 bits */
#define MER_TOKEN_LEN (MER_TOKEN_ID_LEN + 1 + MER_TOKEN_SECRET_LEN)
#define MER_TOKEN_SIZE (MER_TOKEN_LEN + 1)
#define MER_TOKEN_HASH_BYTES 32
/* Base64 of the hash + NUL. */
#define MER_TOKEN_HASH_B64_SIZE 45

/* A parsed token. The secret is secret: wipe with mer_token_wipe. */
struct mer_token {
	char id[MER_TOKEN_ID_LEN + 1];
	char secret[MER_TOKEN_SECRET_LEN + 1];
};

/* A fresh random token text "<id>.<secret>" into out. */
int mer_token_generate(char out[MER_TOKEN_SIZE]) MER_WUR;

/* Splits and checks a token's shape (lengths, alphabet). MER_EPARSE when it
 * is not a token; t is wiped then. Does not look anything up. */
int mer_token_parse(const char *text, struct mer_token *t) MER_WUR;

/* True when s looks like a token id (for URLs and etcd keys). */
int mer_token_id_valid(const char *s);

/* The stored form: BLAKE2b-256(key "meridian-token-v1", id "." secret). */
void mer_token_hash(const struct mer_token *t,
		    uint8_t out[MER_TOKEN_HASH_BYTES]);
/* The hash as base64 (etcd stores text). */
void mer_token_hash_b64(const struct mer_token *t,
			char out[MER_TOKEN_HASH_B64_SIZE]);

/* Constant-time check of t against a stored base64 hash: 0 when it
 * matches, MER_EAUTH when not, MER_EPARSE when stored is not a hash. */
int mer_token_verify(const struct mer_token *t, const char *stored_b64) MER_WUR;

void mer_token_wipe(struct mer_token *t);

#endif
