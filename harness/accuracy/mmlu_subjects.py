"""MMLU's 57 subjects: the category each is reported under and its official test-split size.

Categories are Hendrycks' own, from `categories.py` in github.com/hendrycks/test (commit
1668818): each subject's subcategory rolled up into STEM, humanities, social sciences or
"other (business, health, misc.)", shortened here to "other". lm-evaluation-harness
(`lm_eval/tasks/mmlu/_generate_configs.py`) agrees on every subject but one: it files anatomy
under STEM, where Hendrycks' subcategory "health" puts it under other.

Test counts are the `test` split sizes in the HendrycksTest dataset card
(`datasets/hendrycks_test/README.md` in github.com/huggingface/datasets, the data now served as
`cais/mmlu`): 14,042 questions in all.
"""

from __future__ import annotations

MMLU_CATEGORY_NAMES = ("STEM", "humanities", "social sciences", "other")

# (subject, category, test questions)
_SUBJECTS = (
    ("abstract_algebra", "STEM", 100),
    ("anatomy", "other", 135),
    ("astronomy", "STEM", 152),
    ("business_ethics", "other", 100),
    ("clinical_knowledge", "other", 265),
    ("college_biology", "STEM", 144),
    ("college_chemistry", "STEM", 100),
    ("college_computer_science", "STEM", 100),
    ("college_mathematics", "STEM", 100),
    ("college_medicine", "other", 173),
    ("college_physics", "STEM", 102),
    ("computer_security", "STEM", 100),
    ("conceptual_physics", "STEM", 235),
    ("econometrics", "social sciences", 114),
    ("electrical_engineering", "STEM", 145),
    ("elementary_mathematics", "STEM", 378),
    ("formal_logic", "humanities", 126),
    ("global_facts", "other", 100),
    ("high_school_biology", "STEM", 310),
    ("high_school_chemistry", "STEM", 203),
    ("high_school_computer_science", "STEM", 100),
    ("high_school_european_history", "humanities", 165),
    ("high_school_geography", "social sciences", 198),
    ("high_school_government_and_politics", "social sciences", 193),
    ("high_school_macroeconomics", "social sciences", 390),
    ("high_school_mathematics", "STEM", 270),
    ("high_school_microeconomics", "social sciences", 238),
    ("high_school_physics", "STEM", 151),
    ("high_school_psychology", "social sciences", 545),
    ("high_school_statistics", "STEM", 216),
    ("high_school_us_history", "humanities", 204),
    ("high_school_world_history", "humanities", 237),
    ("human_aging", "other", 223),
    ("human_sexuality", "social sciences", 131),
    ("international_law", "humanities", 121),
    ("jurisprudence", "humanities", 108),
    ("logical_fallacies", "humanities", 163),
    ("machine_learning", "STEM", 112),
    ("management", "other", 103),
    ("marketing", "other", 234),
    ("medical_genetics", "other", 100),
    ("miscellaneous", "other", 783),
    ("moral_disputes", "humanities", 346),
    ("moral_scenarios", "humanities", 895),
    ("nutrition", "other", 306),
    ("philosophy", "humanities", 311),
    ("prehistory", "humanities", 324),
    ("professional_accounting", "other", 282),
    ("professional_law", "humanities", 1534),
    ("professional_medicine", "other", 272),
    ("professional_psychology", "social sciences", 612),
    ("public_relations", "social sciences", 110),
    ("security_studies", "social sciences", 245),
    ("sociology", "social sciences", 201),
    ("us_foreign_policy", "social sciences", 100),
    ("virology", "other", 166),
    ("world_religions", "humanities", 171),
)

MMLU_CATEGORIES: dict[str, str] = {subject: category for subject, category, _ in _SUBJECTS}
MMLU_TEST_COUNTS: dict[str, int] = {subject: count for subject, _, count in _SUBJECTS}
