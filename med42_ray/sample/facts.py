"""Hand-written facts the embedded sample data is generated from (see generate.py).

Medical facts are standard textbook associations (first-line therapies follow common guideline
teaching). Each kind of fact says how to ask about it and state it:

- `rel` / `rel_b`: what is asked, as a noun phrase; `rel` phrases the training data, `rel_b` the
  sample benchmark, so a benchmark question never repeats a training sentence;
- `stmt`: the fact as a sentence (the training answers);
- `case`: a clause for clinical vignettes ("A 45-year-old woman {case}.");
- `topic`: what a student revising it would call it.

Placeholders: {s} subject, {S} subject capitalised, {v} value, {a_v} value with "a"/"an".
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Kind:
    name: str
    rel: str
    rel_b: str
    stmt: str
    case: str
    topic: str
    medmcqa_subject: str
    facts: tuple[tuple[str, str], ...]


KINDS: tuple[Kind, ...] = (
    Kind(
        "drug_class", rel="the drug class of {s}", rel_b="the pharmacological group that includes {s}",
        stmt="{S} is classified as {a_v}.", case="is started on {s}", topic="pharmacology",
        medmcqa_subject="Pharmacology",
        facts=(
            ("metformin", "biguanide"),
            ("lisinopril", "angiotensin-converting enzyme (ACE) inhibitor"),
            ("losartan", "angiotensin II receptor blocker"),
            ("atorvastatin", "HMG-CoA reductase inhibitor (statin)"),
            ("metoprolol", "selective beta-1 adrenergic receptor blocker"),
            ("amlodipine", "dihydropyridine calcium channel blocker"),
            ("furosemide", "loop diuretic"),
            ("hydrochlorothiazide", "thiazide diuretic"),
            ("spironolactone", "potassium-sparing aldosterone antagonist"),
            ("fluoxetine", "selective serotonin reuptake inhibitor (SSRI)"),
            ("omeprazole", "proton pump inhibitor"),
            ("warfarin", "vitamin K antagonist anticoagulant"),
            ("ciprofloxacin", "fluoroquinolone antibiotic"),
            ("glipizide", "sulfonylurea"),
            ("haloperidol", "first-generation (typical) antipsychotic"),
        )),
    Kind(
        "drug_mechanism", rel="the mechanism of action of {s}",
        rel_b="the molecular action responsible for the effect of {s}",
        stmt="The mechanism of action of {s} is {v}.", case="is prescribed {s}", topic="pharmacology",
        medmcqa_subject="Pharmacology",
        facts=(
            ("aspirin", "irreversible inhibition of cyclooxygenase (COX-1 and COX-2)"),
            ("omeprazole", "irreversible inhibition of the gastric H+/K+ ATPase"),
            ("penicillin", "inhibition of bacterial cell wall cross-linking by binding penicillin-binding proteins"),
            ("heparin", "activation of antithrombin"),
            ("methotrexate", "inhibition of dihydrofolate reductase"),
            ("digoxin", "inhibition of the cardiac Na+/K+ ATPase"),
            ("allopurinol", "inhibition of xanthine oxidase"),
            ("clopidogrel", "irreversible blockade of the platelet P2Y12 ADP receptor"),
            ("sildenafil", "inhibition of phosphodiesterase type 5"),
            ("finasteride", "inhibition of 5-alpha-reductase"),
            ("acyclovir", "inhibition of viral DNA polymerase after activation by viral thymidine kinase"),
            ("doxycycline", "binding the 30S ribosomal subunit to block aminoacyl-tRNA attachment"),
            ("ondansetron", "blockade of 5-HT3 serotonin receptors"),
            ("neostigmine", "reversible inhibition of acetylcholinesterase"),
        )),
    Kind(
        "drug_adverse", rel="the adverse effect most characteristic of {s}",
        rel_b="the classic toxicity associated with {s}",
        stmt="A characteristic adverse effect of {s} is {v}.", case="has been taking {s} for several months",
        topic="pharmacology", medmcqa_subject="Pharmacology",
        facts=(
            ("amiodarone", "pulmonary fibrosis"),
            ("lisinopril", "dry cough"),
            ("isoniazid", "peripheral neuropathy"),
            ("gentamicin", "ototoxicity and nephrotoxicity"),
            ("clozapine", "agranulocytosis"),
            ("lithium", "nephrogenic diabetes insipidus"),
            ("phenytoin", "gingival hyperplasia"),
            ("simvastatin", "myopathy"),
            ("ciprofloxacin", "tendon rupture"),
            ("hydralazine", "drug-induced lupus"),
            ("cyclophosphamide", "hemorrhagic cystitis"),
            ("doxorubicin", "dilated cardiomyopathy"),
            ("ethambutol", "optic neuritis"),
            ("spironolactone", "gynecomastia"),
        )),
    Kind(
        "antidote", rel="the antidote for {s} poisoning", rel_b="the specific antidote for {s} toxicity",
        stmt="{S} poisoning is treated with {v}.",
        case="is brought to the emergency department with {s} poisoning", topic="toxicology",
        medmcqa_subject="Forensic Medicine",
        facts=(
            ("acetaminophen", "N-acetylcysteine"),
            ("opioid", "naloxone"),
            ("benzodiazepine", "flumazenil"),
            ("warfarin", "vitamin K"),
            ("heparin", "protamine sulfate"),
            ("methanol", "fomepizole"),
            ("organophosphate", "atropine and pralidoxime"),
            ("digoxin", "digoxin immune Fab"),
            ("iron", "deferoxamine"),
            ("cyanide", "hydroxocobalamin"),
            ("lead", "succimer"),
            ("tricyclic antidepressant", "sodium bicarbonate"),
            ("carbon monoxide", "100% oxygen"),
            ("beta-blocker", "glucagon"),
        )),
    Kind(
        "disease_finding", rel="the hallmark finding of {s}", rel_b="the characteristic diagnostic feature of {s}",
        stmt="The hallmark finding of {s} is {v}.", case="is diagnosed with {s}", topic="pathology",
        medmcqa_subject="Pathology",
        facts=(
            ("myasthenia gravis", "autoantibodies against the acetylcholine receptor"),
            ("Graves disease", "thyroid-stimulating immunoglobulins against the TSH receptor"),
            ("pernicious anemia", "antibodies against intrinsic factor"),
            ("celiac disease", "anti-tissue transglutaminase antibodies"),
            ("Hodgkin lymphoma", "Reed-Sternberg cells"),
            ("multiple myeloma", "a monoclonal M spike on serum protein electrophoresis"),
            ("Crohn disease", "transmural inflammation with noncaseating granulomas"),
            ("tuberculosis", "caseating granulomas"),
            ("acute myeloid leukemia", "Auer rods"),
            ("Parkinson disease", "Lewy bodies in the substantia nigra"),
            ("Alzheimer disease", "beta-amyloid plaques and neurofibrillary tangles"),
            ("systemic lupus erythematosus", "anti-double-stranded DNA antibodies"),
            ("rheumatic heart disease", "Aschoff bodies"),
            ("Wilson disease", "Kayser-Fleischer rings"),
            ("sarcoidosis", "bilateral hilar lymphadenopathy"),
        )),
    Kind(
        "disease_treatment", rel="the first-line treatment for {s}", rel_b="the preferred initial therapy for {s}",
        stmt="The first-line treatment for {s} is {v}.", case="is diagnosed with {s}", topic="therapeutics",
        medmcqa_subject="Medicine",
        facts=(
            ("streptococcal pharyngitis", "penicillin"),
            ("anaphylaxis", "intramuscular epinephrine"),
            ("status epilepticus", "an intravenous benzodiazepine such as lorazepam"),
            ("diabetic ketoacidosis", "intravenous fluids and insulin"),
            ("type 2 diabetes mellitus", "metformin"),
            ("an acute gout flare", "a nonsteroidal anti-inflammatory drug such as naproxen"),
            ("early syphilis", "benzathine penicillin G"),
            ("early Lyme disease in a nonpregnant adult", "doxycycline"),
            ("absence seizures", "ethosuximide"),
            ("trigeminal neuralgia", "carbamazepine"),
            ("hyperkalemia with ECG changes", "intravenous calcium gluconate"),
            ("Pneumocystis pneumonia", "trimethoprim-sulfamethoxazole"),
            ("hypothyroidism", "levothyroxine"),
            ("malignant hyperthermia", "dantrolene"),
            ("tension pneumothorax", "immediate needle decompression"),
        )),
    Kind(
        "organism_disease", rel="the disease caused by {s}", rel_b="the illness that results from infection with {s}",
        stmt="{S} causes {v}.", case="has an infection with {s}", topic="microbiology",
        medmcqa_subject="Microbiology",
        facts=(
            ("Treponema pallidum", "syphilis"),
            ("Mycobacterium leprae", "leprosy"),
            ("Borrelia burgdorferi", "Lyme disease"),
            ("Clostridioides difficile", "pseudomembranous colitis"),
            ("Corynebacterium diphtheriae", "diphtheria"),
            ("Bordetella pertussis", "whooping cough"),
            ("Vibrio cholerae", "cholera"),
            ("Plasmodium falciparum", "malaria"),
            ("Clostridium tetani", "tetanus"),
            ("Epstein-Barr virus", "infectious mononucleosis"),
            ("Rickettsia rickettsii", "Rocky Mountain spotted fever"),
            ("Neisseria gonorrhoeae", "gonorrhea"),
            ("Legionella pneumophila", "Legionnaires disease"),
            ("varicella-zoster virus", "chickenpox and shingles"),
        )),
    Kind(
        "deficiency", rel="the condition caused by {s} deficiency", rel_b="the disorder that results from a lack of {s}",
        stmt="Deficiency of {s} causes {v}.", case="has a severe dietary deficiency of {s}", topic="nutrition",
        medmcqa_subject="Biochemistry",
        facts=(
            ("thiamine (vitamin B1)", "beriberi and Wernicke encephalopathy"),
            ("niacin (vitamin B3)", "pellagra"),
            ("vitamin C", "scurvy"),
            ("vitamin D", "rickets in children"),
            ("vitamin B12", "megaloblastic anemia with subacute combined degeneration"),
            ("folate", "megaloblastic anemia without neurologic deficits"),
            ("iodine", "endemic goiter"),
            ("vitamin A", "night blindness"),
            ("vitamin K", "bleeding from impaired synthesis of clotting factors"),
            ("iron", "microcytic hypochromic anemia"),
            ("zinc", "impaired wound healing and dermatitis"),
            ("riboflavin (vitamin B2)", "angular cheilitis and glossitis"),
        )),
    Kind(
        "nerve_injury", rel="the typical result of injury to the {s}", rel_b="the deficit expected after damage to the {s}",
        stmt="Injury to the {s} causes {v}.", case="sustains an injury to the {s}", topic="anatomy",
        medmcqa_subject="Anatomy",
        facts=(
            ("long thoracic nerve", "winging of the scapula"),
            ("radial nerve", "wrist drop"),
            ("common fibular nerve", "foot drop"),
            ("axillary nerve", "weak shoulder abduction from deltoid paralysis"),
            ("median nerve at the wrist", "weakness and atrophy of the thenar muscles"),
            ("ulnar nerve", "claw hand"),
            ("facial nerve", "paralysis of the muscles of facial expression on the same side"),
            ("recurrent laryngeal nerve", "hoarseness of the voice"),
            ("oculomotor nerve", "ptosis with the eye turned down and out"),
            ("abducens nerve", "inability to abduct the eye"),
            ("musculocutaneous nerve", "weak elbow flexion"),
            ("phrenic nerve", "paralysis of the hemidiaphragm"),
            ("hypoglossal nerve", "deviation of the tongue toward the injured side"),
        )),
    Kind(
        "genetics_inheritance", rel="the inheritance pattern of {s}", rel_b="the mode of transmission of {s}",
        stmt="The inheritance pattern of {s} is {v}.", case="is diagnosed with {s}", topic="genetics",
        medmcqa_subject="Pathology",
        facts=(
            ("cystic fibrosis", "autosomal recessive"),
            ("Huntington disease", "autosomal dominant"),
            ("hemophilia A", "X-linked recessive"),
            ("Duchenne muscular dystrophy", "X-linked recessive"),
            ("Marfan syndrome", "autosomal dominant"),
            ("sickle cell disease", "autosomal recessive"),
            ("phenylketonuria", "autosomal recessive"),
            ("neurofibromatosis type 1", "autosomal dominant"),
            ("hypophosphatemic (vitamin D-resistant) rickets", "X-linked dominant"),
            ("Leber hereditary optic neuropathy", "mitochondrial (maternal)"),
            ("familial hypercholesterolemia", "autosomal dominant"),
            ("G6PD deficiency", "X-linked recessive"),
            ("achondroplasia", "autosomal dominant"),
            ("Tay-Sachs disease", "autosomal recessive"),
        )),
    Kind(
        "gene", rel="the gene mutated in {s}", rel_b="the gene whose mutation underlies {s}",
        stmt="{S} is caused by mutations in the {v} gene.", case="is diagnosed with {s}", topic="genetics",
        medmcqa_subject="Pathology",
        facts=(
            ("cystic fibrosis", "CFTR"),
            ("Marfan syndrome", "FBN1 (fibrillin-1)"),
            ("Huntington disease", "HTT (huntingtin)"),
            ("Duchenne muscular dystrophy", "DMD (dystrophin)"),
            ("neurofibromatosis type 1", "NF1 (neurofibromin)"),
            ("hereditary retinoblastoma", "RB1"),
            ("familial adenomatous polyposis", "APC"),
            ("Li-Fraumeni syndrome", "TP53"),
            ("sickle cell disease", "HBB (beta-globin)"),
            ("hereditary hemochromatosis", "HFE"),
            ("fragile X syndrome", "FMR1"),
            ("Wilson disease", "ATP7B"),
            ("achondroplasia", "FGFR3"),
            ("hereditary breast and ovarian cancer syndrome", "BRCA1"),
        )),
    Kind(
        "hormone_source", rel="the source of {s}", rel_b="the site where {s} is produced",
        stmt="{S} is produced by the {v}.", case="has blood levels of {s} measured", topic="physiology",
        medmcqa_subject="Physiology",
        facts=(
            ("insulin", "beta cells of the pancreatic islets"),
            ("glucagon", "alpha cells of the pancreatic islets"),
            ("pancreatic somatostatin", "delta cells of the pancreatic islets"),
            ("cortisol", "zona fasciculata of the adrenal cortex"),
            ("aldosterone", "zona glomerulosa of the adrenal cortex"),
            ("epinephrine", "chromaffin cells of the adrenal medulla"),
            ("antidiuretic hormone", "supraoptic and paraventricular nuclei of the hypothalamus"),
            ("calcitonin", "parafollicular (C) cells of the thyroid"),
            ("parathyroid hormone", "chief cells of the parathyroid glands"),
            ("erythropoietin", "peritubular interstitial cells of the kidney"),
            ("testosterone", "Leydig cells of the testis"),
            ("prolactin", "lactotroph cells of the anterior pituitary"),
            ("renin", "juxtaglomerular cells of the kidney"),
        )),
)

# A tip the chat answers add after the fact, per topic: why the fact matters.
TOPIC_TIPS = {
    "pharmacology": "Knowing this helps predict the drug's effects, interactions and monitoring needs.",
    "toxicology": "Early recognition and prompt treatment of the poisoning improve the outcome.",
    "pathology": "This finding is what clinicians and pathologists look for to confirm the diagnosis.",
    "therapeutics": "Treatment should still be adjusted to the individual patient and local guidelines.",
    "microbiology": "Identifying the organism guides the choice of antimicrobial therapy and prevention.",
    "nutrition": "The condition usually improves once the deficiency is corrected.",
    "anatomy": "The deficit follows from the muscles and skin that the nerve supplies.",
    "genetics": "This matters for genetic counselling of the patient and the family.",
    "physiology": "Knowing where a hormone comes from explains the effects of disease in that tissue.",
}

# ---- general domain -----------------------------------------------------------------------------

# (country, capital, continent)
CAPITALS: tuple[tuple[str, str, str], ...] = (
    ("France", "Paris", "Europe"), ("Germany", "Berlin", "Europe"), ("Italy", "Rome", "Europe"),
    ("Spain", "Madrid", "Europe"), ("Portugal", "Lisbon", "Europe"), ("Greece", "Athens", "Europe"),
    ("Norway", "Oslo", "Europe"), ("Sweden", "Stockholm", "Europe"), ("Finland", "Helsinki", "Europe"),
    ("Poland", "Warsaw", "Europe"), ("Ireland", "Dublin", "Europe"), ("Austria", "Vienna", "Europe"),
    ("Japan", "Tokyo", "Asia"), ("China", "Beijing", "Asia"), ("India", "New Delhi", "Asia"),
    ("South Korea", "Seoul", "Asia"), ("Thailand", "Bangkok", "Asia"), ("Vietnam", "Hanoi", "Asia"),
    ("United Arab Emirates", "Abu Dhabi", "Asia"), ("Saudi Arabia", "Riyadh", "Asia"),
    ("Egypt", "Cairo", "Africa"), ("Kenya", "Nairobi", "Africa"), ("Nigeria", "Abuja", "Africa"),
    ("Morocco", "Rabat", "Africa"), ("Ghana", "Accra", "Africa"), ("Ethiopia", "Addis Ababa", "Africa"),
    ("Canada", "Ottawa", "North America"), ("Mexico", "Mexico City", "North America"),
    ("Cuba", "Havana", "North America"), ("Brazil", "Brasilia", "South America"),
    ("Argentina", "Buenos Aires", "South America"), ("Peru", "Lima", "South America"),
    ("Chile", "Santiago", "South America"), ("Colombia", "Bogota", "South America"),
    ("Australia", "Canberra", "Oceania"), ("New Zealand", "Wellington", "Oceania"), ("Fiji", "Suva", "Oceania"),
)

# (from unit, to unit, factor, offset): to = from * factor + offset
CONVERSIONS: tuple[tuple[str, str, float, float], ...] = (
    ("kilometers", "meters", 1000, 0), ("meters", "centimeters", 100, 0), ("inches", "centimeters", 2.54, 0),
    ("feet", "inches", 12, 0), ("miles", "kilometers", 1.609344, 0), ("kilograms", "grams", 1000, 0),
    ("pounds", "kilograms", 0.45359237, 0), ("liters", "milliliters", 1000, 0), ("hours", "minutes", 60, 0),
    ("days", "hours", 24, 0), ("minutes", "seconds", 60, 0), ("weeks", "days", 7, 0),
    ("degrees Celsius", "degrees Fahrenheit", 1.8, 32),
)

DEFINITIONS: tuple[tuple[str, str], ...] = (
    ("photosynthesis", "the process by which plants, algae and some bacteria use light energy to make sugars from carbon dioxide and water, releasing oxygen"),
    ("evaporation", "the change of a liquid into a gas at its surface, below its boiling point"),
    ("gravity", "the force by which masses attract each other, which keeps planets in orbit and makes objects fall"),
    ("an atom", "the smallest unit of a chemical element, made of a nucleus of protons and neutrons surrounded by electrons"),
    ("a prime number", "a whole number greater than 1 whose only divisors are 1 and itself"),
    ("a fraction", "a number that represents a part of a whole, written as one integer over another"),
    ("an algorithm", "a finite sequence of well-defined steps for solving a problem or performing a computation"),
    ("a noun", "a word that names a person, place, thing or idea"),
    ("a verb", "a word that describes an action, an occurrence or a state of being"),
    ("a metaphor", "a figure of speech that describes something by saying it is something else, without using 'like' or 'as'"),
    ("a synonym", "a word that means the same or nearly the same as another word"),
    ("a palindrome", "a word or phrase that reads the same backwards as forwards, such as 'level'"),
    ("democracy", "a system of government in which power belongs to the people, who rule directly or through elected representatives"),
    ("inflation", "a general rise in prices over time, which reduces the purchasing power of money"),
    ("a budget", "a plan that estimates income and spending over a period of time"),
    ("a peninsula", "a piece of land surrounded by water on three sides and connected to a larger landmass"),
    ("a continent", "one of the very large landmasses of the Earth, such as Africa or Asia"),
    ("a volcano", "an opening in the Earth's crust through which molten rock, ash and gases escape"),
    ("an ecosystem", "a community of living organisms interacting with each other and with their physical environment"),
    ("a mammal", "a warm-blooded vertebrate animal that has hair and feeds its young with milk"),
    ("a hypothesis", "a proposed explanation that can be tested by observation or experiment"),
    ("renewable energy", "energy from sources that are naturally replenished, such as sunlight, wind and flowing water"),
    ("a thermometer", "an instrument that measures temperature"),
    ("a haiku", "a short Japanese poem of three lines with five, seven and five syllables"),
    ("an island", "a piece of land completely surrounded by water"),
)
