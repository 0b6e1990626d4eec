"""Questions for the analyser: the template check, the question built from an Action, and the context an
analyser gets besides the frame (prompts, contrast prompts, region polygon)."""
from __future__ import annotations

import re
from typing import Any, Mapping

from .types import QUESTION_FIELDS, ActionEvent, RuleInfo


# -- questions -----------------------------------------------------------------------------------------------
def region_words(region: str) -> str:
    """'near_zone' -> 'near zone' (region names are identifiers; questions are English)."""
    return re.sub(r'[_\-]+', ' ', region).strip()


def check_question_template(template: str) -> str:
    """Fail at startup on a template that would fail at every escalation."""
    if not template.strip():
        raise ValueError('question template must not be empty')
    try:
        template.format(prompt='p', region='r', where=' in the r', action='STOP')
    except (KeyError, IndexError, ValueError) as err:
        raise ValueError(f'question template {template!r}: {err!r}; available fields: '
                         f'{{{"}, {".join(QUESTION_FIELDS)}}}') from None
    return template


def build_question(template: str, event: ActionEvent, prompt: str) -> str:
    region = region_words(event.region)
    return template.format(prompt=prompt, region=region, where=f' in the {region}' if region else '',
                           action=event.action)


def analysis_context(event: ActionEvent, regions: Mapping[str, Any],
                     action_rules: Mapping[str, RuleInfo]) -> dict[str, Any]:
    """What an analyser gets besides the frame and the question: the action, its prompts and contrast
    prompts from the policy file, and the region polygon (None = full frame)."""
    info = action_rules.get(event.action, RuleInfo())
    prompt = event.matched_prompt or (info.prompts[0] if info.prompts else '')
    return {'action': event.action, 'action_code': event.action_code, 'trigger': event.trigger,
            'prompt': prompt, 'prompts': info.prompts or ((prompt,) if prompt else ()),
            'contrast': info.contrast, 'region_name': event.region,
            'region': regions.get(event.region) if event.region else None,
            'score': event.score, 'threshold': event.threshold, 'stamp_s': event.stamp_s,
            'frame_sequence': event.frame_sequence}


def question_for(template: str, event: ActionEvent, context: Mapping[str, Any]) -> str:
    # A memory rule has no prompt: ask about the action itself.
    prompt = context['prompt'] or f'a reason to {event.action.lower().replace("_", " ")} now'
    return build_question(template, event, prompt)
