"""Chat templates of real models that the tests serve with tiny random weights."""

# Mistral-7B-Instruct-v0.1's template, as its tokenizer_config.json gives it: alternating user
# and assistant turns only, no system turn (Mixtral-8x7B-Instruct-v0.1's is the same)
ALTERNATING = (
    "{{ bos_token }}{% for message in messages %}{% if (message['role'] == 'user') != "
    "(loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate "
    "user/assistant/user/assistant/...') }}{% endif %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% elif message['role'] == 'assistant' %}"
    "{{ message['content'] + eos_token + ' ' }}{% else %}{{ raise_exception('Only user and "
    "assistant roles are supported!') }}{% endif %}{% endfor %}")
