/*
 * Long-term X25519 key pairs of the broker and of each site: generation,
 * key files (created 0600, refused when group or others may read them) and
 * fingerprints "SHA256:<base64>" that an agent pins at join, as kubeadm pins
 * a CA hash. The handshake that uses the keys is in channel.h.
 */
#ifndef MERIDIAN_KEYS_H
#define MERIDIAN_KEYS_H

#include <stddef.h>
#include <stdint.h>

/* Crypto wrappers: a caller that ignores the result is a bug. */
#ifndef MER_WUR
#define MER_WUR __attribute__((warn_unused_result))
#endif

#define MER_KEY_BYTES 32
/* "SHA256:" + 43 base64 characters (no padding) + NUL. */
#define MER_KEY_FP_SIZE 51
/* Base64 (standard alphabet, padded) of a 32-byte key + NUL. */
#define MER_KEY_B64_SIZE 45

struct mer_keypair {
	uint8_t pk[MER_KEY_BYTES]; /* public */
	uint8_t sk[MER_KEY_BYTES]; /* private: wipe with mer_keypair_wipe */
};

/* Fresh random key pair. Needs sodium_init() (called inside). */
int mer_keypair_generate(struct mer_keypair *kp) MER_WUR;

/*
 * Writes the key pair to a new file at path, mode 0600 whatever the umask.
 * Never overwrites: an existing path gives MER_EEXIST. Other failures give
 * MER_EIO; err (may be NULL) gets one line naming the file.
 */
int mer_keypair_save(const char *path, const struct mer_keypair *kp, char *err,
		     size_t errlen) MER_WUR;

/*
 * Reads a key file written by mer_keypair_save. A file that group or others
 * may read or write gives MER_EPERM and err says so, naming the file and its
 * mode ("key file /x/site.key has mode 0644: ..."), as ssh does; the key is
 * not read at all then. Missing file: MER_ENOTFOUND. Bad content: MER_EPARSE.
 */
int mer_keypair_load(const char *path, struct mer_keypair *kp, char *err,
		     size_t errlen) MER_WUR;

/* Loads path, or generates and saves a new pair there when it does not exist
 * (*created = 1 then; created may be NULL). */
int mer_keypair_load_or_create(const char *path, struct mer_keypair *kp,
			       int *created, char *err, size_t errlen) MER_WUR;

/* Wipes the private half (and the public one, for tidiness). */
void mer_keypair_wipe(struct mer_keypair *kp);

/* "SHA256:<base64 of SHA-256(pk), no padding>" into out. */
void mer_key_fingerprint(const uint8_t pk[MER_KEY_BYTES],
			 char out[MER_KEY_FP_SIZE]);

/*
 * Checks pk against a pinned fingerprint in constant time. 0 when it
 * matches; MER_EPARSE when fp is not "SHA256:<base64>" of 32 bytes;
 * MER_EAUTH when it does not match.
 */
int mer_key_fingerprint_check(const uint8_t pk[MER_KEY_BYTES],
			      const char *fp) MER_WUR;

/* Public keys as text (standard base64, padded), for etcd and the CLI. */
void mer_key_public_encode(const uint8_t pk[MER_KEY_BYTES],
			   char out[MER_KEY_B64_SIZE]);
int mer_key_public_decode(const char *b64, uint8_t pk[MER_KEY_BYTES]) MER_WUR;

#endif
