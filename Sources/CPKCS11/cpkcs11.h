/*
 * The few PKCS#11 (Cryptoki v2.40) types and constants the KeyManagement module uses, written
 * from the OASIS specification's facts (type sizes, structure layouts, function-list order and
 * constant values). Header only: the module itself is loaded at run time with dlopen, so
 * nothing links against a PKCS#11 library.
 */
#ifndef ES_CPKCS11_H
#define ES_CPKCS11_H

typedef unsigned long es_ck_ulong;
typedef unsigned long es_ck_rv;

typedef struct {
    unsigned char major;
    unsigned char minor;
} es_ck_version;

typedef struct {
    es_ck_ulong type;
    void *value;
    es_ck_ulong value_len;
} es_ck_attribute;

typedef struct {
    es_ck_ulong mechanism;
    void *parameter;
    es_ck_ulong parameter_len;
} es_ck_mechanism;

/* CK_GCM_PARAMS as in v2.40 (with ulIvBits), which SoftHSM2 and most modules use. */
typedef struct {
    unsigned char *iv;
    es_ck_ulong iv_len;
    es_ck_ulong iv_bits;
    unsigned char *aad;
    es_ck_ulong aad_len;
    es_ck_ulong tag_bits;
} es_ck_gcm_params;

typedef struct {
    unsigned char label[32];
    unsigned char manufacturer_id[32];
    unsigned char model[16];
    unsigned char serial_number[16];
    es_ck_ulong flags;
    es_ck_ulong max_session_count;
    es_ck_ulong session_count;
    es_ck_ulong max_rw_session_count;
    es_ck_ulong rw_session_count;
    es_ck_ulong max_pin_len;
    es_ck_ulong min_pin_len;
    es_ck_ulong total_public_memory;
    es_ck_ulong free_public_memory;
    es_ck_ulong total_private_memory;
    es_ck_ulong free_private_memory;
    es_ck_version hardware_version;
    es_ck_version firmware_version;
    unsigned char utc_time[16];
} es_ck_token_info;

typedef struct {
    void *create_mutex;
    void *destroy_mutex;
    void *lock_mutex;
    void *unlock_mutex;
    es_ck_ulong flags;
    void *reserved;
} es_ck_c_initialize_args;

/* The function list, in the specification's order. Functions this library never calls are
 * plain pointers (same size and alignment as a function pointer). */
typedef struct es_ck_function_list {
    es_ck_version version;
    es_ck_rv (*C_Initialize)(void *init_args);
    es_ck_rv (*C_Finalize)(void *reserved);
    void *C_GetInfo;
    void *C_GetFunctionList;
    es_ck_rv (*C_GetSlotList)(unsigned char token_present, es_ck_ulong *slots, es_ck_ulong *count);
    void *C_GetSlotInfo;
    es_ck_rv (*C_GetTokenInfo)(es_ck_ulong slot, es_ck_token_info *info);
    void *C_GetMechanismList;
    void *C_GetMechanismInfo;
    void *C_InitToken;
    void *C_InitPIN;
    void *C_SetPIN;
    es_ck_rv (*C_OpenSession)(es_ck_ulong slot, es_ck_ulong flags, void *application, void *notify, es_ck_ulong *session);
    es_ck_rv (*C_CloseSession)(es_ck_ulong session);
    void *C_CloseAllSessions;
    void *C_GetSessionInfo;
    void *C_GetOperationState;
    void *C_SetOperationState;
    es_ck_rv (*C_Login)(es_ck_ulong session, es_ck_ulong user_type, unsigned char *pin, es_ck_ulong pin_len);
    es_ck_rv (*C_Logout)(es_ck_ulong session);
    void *C_CreateObject;
    void *C_CopyObject;
    es_ck_rv (*C_DestroyObject)(es_ck_ulong session, es_ck_ulong object);
    void *C_GetObjectSize;
    es_ck_rv (*C_GetAttributeValue)(es_ck_ulong session, es_ck_ulong object, es_ck_attribute *templ, es_ck_ulong count);
    void *C_SetAttributeValue;
    es_ck_rv (*C_FindObjectsInit)(es_ck_ulong session, es_ck_attribute *templ, es_ck_ulong count);
    es_ck_rv (*C_FindObjects)(es_ck_ulong session, es_ck_ulong *objects, es_ck_ulong max_count, es_ck_ulong *count);
    es_ck_rv (*C_FindObjectsFinal)(es_ck_ulong session);
    es_ck_rv (*C_EncryptInit)(es_ck_ulong session, es_ck_mechanism *mechanism, es_ck_ulong key);
    es_ck_rv (*C_Encrypt)(es_ck_ulong session, unsigned char *data, es_ck_ulong data_len, unsigned char *out, es_ck_ulong *out_len);
    void *C_EncryptUpdate;
    void *C_EncryptFinal;
    es_ck_rv (*C_DecryptInit)(es_ck_ulong session, es_ck_mechanism *mechanism, es_ck_ulong key);
    es_ck_rv (*C_Decrypt)(es_ck_ulong session, unsigned char *data, es_ck_ulong data_len, unsigned char *out, es_ck_ulong *out_len);
    void *C_DecryptUpdate;
    void *C_DecryptFinal;
    void *C_DigestInit;
    void *C_Digest;
    void *C_DigestUpdate;
    void *C_DigestKey;
    void *C_DigestFinal;
    void *C_SignInit;
    void *C_Sign;
    void *C_SignUpdate;
    void *C_SignFinal;
    void *C_SignRecoverInit;
    void *C_SignRecover;
    void *C_VerifyInit;
    void *C_Verify;
    void *C_VerifyUpdate;
    void *C_VerifyFinal;
    void *C_VerifyRecoverInit;
    void *C_VerifyRecover;
    void *C_DigestEncryptUpdate;
    void *C_DecryptDigestUpdate;
    void *C_SignEncryptUpdate;
    void *C_DecryptVerifyUpdate;
    es_ck_rv (*C_GenerateKey)(es_ck_ulong session, es_ck_mechanism *mechanism, es_ck_attribute *templ, es_ck_ulong count, es_ck_ulong *key);
    void *C_GenerateKeyPair;
    void *C_WrapKey;
    void *C_UnwrapKey;
    void *C_DeriveKey;
    void *C_SeedRandom;
    void *C_GenerateRandom;
    void *C_GetFunctionStatus;
    void *C_CancelFunction;
    void *C_WaitForSlotEvent;
} es_ck_function_list;

typedef es_ck_rv (*es_ck_get_function_list)(es_ck_function_list **list);

#define ES_CKR_OK                           0x00UL
#define ES_CKR_GENERAL_ERROR                0x05UL
#define ES_CKR_ARGUMENTS_BAD                0x07UL
#define ES_CKR_DEVICE_ERROR                 0x30UL
#define ES_CKR_DEVICE_REMOVED               0x32UL
#define ES_CKR_AEAD_DECRYPT_FAILED          0x35UL
#define ES_CKR_ENCRYPTED_DATA_INVALID       0x40UL
#define ES_CKR_ENCRYPTED_DATA_LEN_RANGE     0x41UL
#define ES_CKR_KEY_HANDLE_INVALID           0x60UL
#define ES_CKR_KEY_FUNCTION_NOT_PERMITTED   0x68UL
#define ES_CKR_MECHANISM_INVALID            0x70UL
#define ES_CKR_MECHANISM_PARAM_INVALID      0x71UL
#define ES_CKR_PIN_INCORRECT                0xA0UL
#define ES_CKR_PIN_INVALID                  0xA1UL
#define ES_CKR_PIN_LEN_RANGE                0xA2UL
#define ES_CKR_PIN_EXPIRED                  0xA3UL
#define ES_CKR_PIN_LOCKED                   0xA4UL
#define ES_CKR_SESSION_CLOSED               0xB0UL
#define ES_CKR_SESSION_HANDLE_INVALID       0xB3UL
#define ES_CKR_TOKEN_NOT_PRESENT            0xE0UL
#define ES_CKR_TOKEN_NOT_RECOGNIZED         0xE1UL
#define ES_CKR_USER_ALREADY_LOGGED_IN       0x100UL
#define ES_CKR_USER_NOT_LOGGED_IN           0x101UL
#define ES_CKR_BUFFER_TOO_SMALL             0x150UL
#define ES_CKR_CRYPTOKI_ALREADY_INITIALIZED 0x191UL
#define ES_CKR_CRYPTOKI_NOT_INITIALIZED     0x190UL

#define ES_CKF_TOKEN_PRESENT     0x01UL
#define ES_CKF_RW_SESSION        0x02UL
#define ES_CKF_SERIAL_SESSION    0x04UL
#define ES_CKF_OS_LOCKING_OK     0x02UL
#define ES_CKF_TOKEN_INITIALIZED 0x400UL

#define ES_CKU_USER 1UL

#define ES_CKA_CLASS       0x000UL
#define ES_CKA_TOKEN       0x001UL
#define ES_CKA_PRIVATE     0x002UL
#define ES_CKA_LABEL       0x003UL
#define ES_CKA_KEY_TYPE    0x100UL
#define ES_CKA_ID          0x102UL
#define ES_CKA_SENSITIVE   0x103UL
#define ES_CKA_ENCRYPT     0x104UL
#define ES_CKA_DECRYPT     0x105UL
#define ES_CKA_WRAP        0x106UL
#define ES_CKA_UNWRAP      0x107UL
#define ES_CKA_SIGN        0x108UL
#define ES_CKA_VERIFY      0x10AUL
#define ES_CKA_VALUE_LEN   0x161UL
#define ES_CKA_EXTRACTABLE 0x162UL

#define ES_CKO_SECRET_KEY 4UL
#define ES_CKK_AES        0x1FUL
#define ES_CKM_AES_KEY_GEN 0x1080UL
#define ES_CKM_AES_GCM     0x1087UL

#endif
